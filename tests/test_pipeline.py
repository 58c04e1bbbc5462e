"""GPU-pipeline pieces that CPU can check: worker chunks and threads, out-of-memory back-off, torch.compile."""

import json

import numpy as np
import pytest
import torch

from mamba_bench.errors import MambaBenchError
from mamba_bench.eval import corrupt as corrupt_mod
from mamba_bench.eval.corrupt import CorruptConfig, LoadedModel, forward_with_backoff, run_corrupt
from mamba_bench.models.registry import get_spec


class RunsOutOfMemory(torch.nn.Module):
    """Wraps a model; batches above ``limit`` images raise CUDA's out-of-memory error."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    def forward(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_backoff_halves_until_it_fits_and_keeps_the_outputs():
    spec = get_spec("convnext-nano")
    torch.manual_seed(0)
    inner = spec.build(10).eval()
    x = torch.randn(10, 3, 64, 64)
    with torch.inference_mode():
        want = inner(x)
        m = LoadedModel("convnext-nano", spec, RunsOutOfMemory(inner, 3), None, None)
        limits, events = {}, []
        got = forward_with_backoff(m, x, limits, events)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert events == [{"model": "convnext-nano", "batch_size": 10, "retried_with": 5},
                          {"model": "convnext-nano", "batch_size": 5, "retried_with": 2}]
        assert limits == {"convnext-nano": 2}
        # the next batch starts at the size that fitted: no new failures
        m.module.calls.clear()
        forward_with_backoff(m, x, limits, events)
        assert m.module.calls == [2, 2, 2, 2, 2] and len(events) == 2
        never = LoadedModel("big", spec, RunsOutOfMemory(inner, 0), None, None)
        with pytest.raises(MambaBenchError, match="even one image at a time"):
            forward_with_backoff(never, x, {}, [])


def test_run_records_backoff_and_results_match(tmp_path, monkeypatch):
    common = dict(models=["convnext-nano"], data="digits", per_class=2, corruptions=["invert"], random_init=True,
                  batch_size=8, workers=0, device="cpu", progress=False, save_predictions=True)
    plain = run_corrupt(CorruptConfig(out=str(tmp_path / "a"), **common))
    load = corrupt_mod.load_models

    def tight(*a, **k):
        return [LoadedModel(m.name, m.spec, RunsOutOfMemory(m.module, 3), m.weights, m.weights_sha256)
                for m in load(*a, **k)]

    monkeypatch.setattr(corrupt_mod, "load_models", tight)
    squeezed = run_corrupt(CorruptConfig(out=str(tmp_path / "b"), **common))
    assert np.allclose(plain.metrics.top1, squeezed.metrics.top1)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    events = manifest["sessions"][-1]["oom_backoff"]
    assert events[0] == {"model": "convnext-nano", "batch_size": 8, "retried_with": 4}
    assert events[1]["retried_with"] == 2 and len(events) == 2
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["sessions"][-1]["oom_backoff"] == []


def test_compile_gives_the_eager_predictions(tmp_path):
    common = dict(models=["convnext-nano"], data="digits", per_class=1, corruptions=["invert"], random_init=True,
                  batch_size=10, workers=0, device="cpu", progress=False, save_predictions=True)
    run_corrupt(CorruptConfig(out=str(tmp_path / "e"), **common))
    try:
        run_corrupt(CorruptConfig(out=str(tmp_path / "c"), compile=True, **common))
    except MambaBenchError as exc:  # a machine without a working compiler gets the one-line error
        assert "torch.compile failed" in str(exc) and "without --compile" in str(exc)
        pytest.skip(f"torch.compile unavailable here: {exc}")
    import pandas as pd

    a = pd.read_parquet(tmp_path / "e" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "c" / "predictions.parquet")
    assert (a.pred.to_numpy() == b.pred.to_numpy()).all()
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-3, atol=1e-5)
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["execution"]["compile"] is True


class _ThreadCounts(torch.utils.data.Dataset):
    """Item i = (OpenCV threads, most BLAS/OpenMP threads) of the process that makes it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import cv2
        from threadpoolctl import threadpool_info

        return torch.tensor([cv2.getNumThreads(), max([p["num_threads"] for p in threadpool_info()] or [1])])


def test_corruption_workers_run_one_thread_each_and_the_parent_keeps_its_own():
    import cv2
    from threadpoolctl import threadpool_info

    cv2.setNumThreads(2)  # what OpenCV picks by itself on a 2-core machine; more on bigger ones
    pools, threads = threadpool_info(), torch.get_num_threads()
    stream = corrupt_mod.cell_loader(_ThreadCounts(), [[0, 1], [2, 3]], workers=2)
    got = torch.cat(list(stream))
    assert got.tolist() == [[1, 1]] * 4
    # the models in this process keep their threads
    assert cv2.getNumThreads() == 2 and torch.get_num_threads() == threads
    assert [p["num_threads"] for p in threadpool_info()][:len(pools)] == [p["num_threads"] for p in pools]
    in_process = torch.cat(list(corrupt_mod.cell_loader(_ThreadCounts(), [[0], [1]], workers=0)))
    assert in_process[:, 0].tolist() == [2, 2]  # no workers: nothing is limited


def _digits_cells():
    from mamba_bench.corruptions import load_suite
    from mamba_bench.data import open_dataset

    ds = open_dataset("digits", per_class=2, seed=0)
    images = np.stack([ds.load(i) for i in range(len(ds))])
    ids = [s.image_id for s in ds.samples]
    labels = torch.tensor([s.label for s in ds.samples])
    suite = load_suite()
    cells = [(None, 0), (suite.corruptions["additive_gaussian_noise"], 3), (suite.corruptions["invert"], 0)]
    return images, ids, labels, cells


def test_batches_made_of_worker_chunks_give_the_same_outputs(monkeypatch):
    """A batch larger than CHUNK is corrupted in pieces by several workers and joined again: the
    per-image outputs, their order and the progress counts equal one batch made in this process."""
    images, ids, labels, cells = _digits_cells()
    spec = get_spec("convnext-nano")
    torch.manual_seed(0)
    model = LoadedModel("convnext-nano", spec, spec.build(10).eval(), None, None)

    def run(workers, shard=(0, 1)):
        seen = []
        out = list(corrupt_mod.iterate_cells(images, ids, labels, cells, [0, 1, 2], [model], seed=3, batch_size=7,
                                             workers=workers, device=torch.device("cpu"), on_batch=seen.append,
                                             shard=shard))
        return out, seen

    whole, seen_whole = run(0)
    monkeypatch.setattr(corrupt_mod, "CHUNK", 3)  # 2 workers: batches of 7 → chunks of 4 and 3; the last of 6: 4, 2
    chunked, seen_chunked = run(2)
    assert seen_whole == seen_chunked == [7, 7, 6] * 3
    assert [j for j, _, _ in chunked] == [0, 1, 2]
    for (j, pos, a), (k, pos2, b) in zip(whole, chunked, strict=True):
        assert j == k and pos.tolist() == pos2.tolist() == list(range(20))
        for key in a["convnext-nano"]:
            np.testing.assert_array_equal(a["convnext-nano"][key], b["convnext-nano"][key])
    # a rank's shard of chunked batches: every other batch, the same outputs at the same positions
    rank1, seen1 = run(2, shard=(1, 2))
    assert seen1 == [7] * 3
    for (_, _, a), (_, pos, b) in zip(whole, rank1, strict=True):
        assert pos.tolist() == list(range(7, 14))
        np.testing.assert_array_equal(a["convnext-nano"]["nll"][7:14], b["convnext-nano"]["nll"])
