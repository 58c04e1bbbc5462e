"""The DG protocols of the official code: DomainBed's splits, error bars and evaluation points,
the DGMamba recipe, DSU's official positions and START's two readings of its open choices."""

import hashlib

import numpy as np
import pytest

from mamba_bench.dg.data import Domain, cell_splits, rotated_digits, seed_hash


def _domainbed_seed_hash(*args) -> int:
    # DomainBed lib/misc.py: md5 of str(args) modulo 2**31
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def _domainbed_split(n: int, trial_seed: int, env_i: int) -> tuple[list[int], list[int]]:
    """DomainBed scripts/train.py + lib/misc.split_dataset, written from their description:
    keys 0..n-1 shuffled in place by RandomState(seed_hash(trial_seed, env_i)); the first
    int(n * holdout_fraction) keys are the 'out' split, the rest the 'in' split."""
    keys = list(range(n))
    np.random.RandomState(_domainbed_seed_hash(trial_seed, env_i)).shuffle(keys)
    n_out = int(n * 0.2)
    return sorted(keys[n_out:]), sorted(keys[:n_out])


@pytest.mark.parametrize("trial_seed, env_i, n", [
    (0, 0, 2048), (0, 3, 3929), (1, 1, 2344), (2, 2, 1670), (5, 0, 7), (0, 5, 300), (17, 4, 1001),
])
def test_domainbed_split_indices_are_domainbeds(trial_seed, env_i, n):
    d = Domain("d", np.zeros(n, np.int64))
    a, b = d.split(trial_seed, env_i)
    ref_in, ref_out = _domainbed_split(n, trial_seed, env_i)
    assert a.tolist() == ref_in and b.tolist() == ref_out
    assert seed_hash(trial_seed, env_i) == _domainbed_seed_hash(trial_seed, env_i)
    if n > 20:  # the earlier split has the same sizes but other indices (kept as protocol "ours")
        old_in, old_out = d.split(trial_seed, env_i, "ours")
        assert len(old_out) == len(b) and old_out.tolist() != ref_out


def test_dgmamba_split_is_stratified_and_keeps_the_test_domain_whole():
    ds = rotated_digits()
    s = cell_splits(ds, "dgmamba", 0, "75deg")
    assert s["75deg"] == {"all": list(range(len(ds.domains[5])))}
    for d in ds.domains[:5]:
        inn, out = np.asarray(s[d.name]["in"]), np.asarray(s[d.name]["out"])
        assert sorted([*inn, *out]) == list(range(len(d))) and len(out) == round(0.2 * len(d))
        # stratified: every class keeps its share (within one image) in the held-out 20 %
        for c in range(10):
            assert abs((d.labels[out] == c).sum() - 0.2 * (d.labels == c).sum()) <= 1
    # DGMamba seeds every domain's split with the same random_state, not with the domain index
    d0, d1 = ds.domains[0], ds.domains[1]
    assert np.array_equal(d0._stratified_split(0)[1], d0.split(0, 3, "dgmamba")[1])
    assert s[d1.name] != cell_splits(ds, "dgmamba", 1, "75deg")[d1.name]
