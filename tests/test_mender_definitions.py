"""Mender's two definitions on small hand-computed tensors: every map, score and loss of each, with
inputs on which the other definition gives a different value (so each test would fail on it)."""

import numpy as np
import pytest
import torch

from mamba_bench.analysis import mender_official as off
from mamba_bench.analysis import mender_seed as seed
from mamba_bench.analysis.definitions import DEFINITIONS, get_definition
from mamba_bench.analysis.mender import Correlations
from mamba_bench.errors import MambaBenchError

# one image, D = 2 channels, 1 × 2 tokens
STATE = torch.tensor([[[[1.0, -2.0]], [[3.0, 4.0]]]])
GRAD = torch.tensor([[[[0.5, -1.5]], [[-1.0, -1.0]]]])


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_registry():
    assert set(DEFINITIONS) == {"official", "seed"} and get_definition().name == "official"
    assert get_definition("seed").captures == {"x": "in", "c": "conv", "s": "ssm", "y": "out"}
    # official c after SiLU (our "x"), s after out_norm
    assert get_definition("official").captures == {"x": "in", "c": "x", "s": "ssm_norm", "y": "out"}
    with pytest.raises(MambaBenchError, match="unknown --definition 'paper'"):
        get_definition("paper")


def test_objective_logit_vs_probability():
    logits, t = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    close(off.objective(logits, t), [2.0])
    close(seed.objective(logits, t), [np.exp(2) / (np.exp(2) + 1)])


def test_external_map():
    # official: ReLU(s) ⊙ mean_n ReLU(g) = ch0 [1, 0]·0.25, ch1 [3, 4]·0 → mean over channels
    close(off.external_map(STATE, GRAD), [[[0.125, 0.0]]])
    # seed: mean_n(g) ⊙ s, signed: ch0 −0.5·[1, −2], ch1 −1·[3, 4] → [(−0.5 − 3)/2, (1 − 4)/2]
    close(seed.external_map(STATE, GRAD), [[[-1.75, -1.5]]])


def test_internal_vector():
    close(off.internal_vector(STATE, GRAD), [[0.25, 0.0]])  # mean_n ReLU(s) ⊙ ReLU(g)
    close(seed.internal_vector(STATE, GRAD), [[1.75, -3.5]])  # mean_n g ⊙ s


E = torch.tensor([[[-1.0, 3.0], [1.0, 5.0]]])  # one 2 × 2 map


def test_view_map():
    close(off.normalised_map(E, (2, 2)), [[[0.0, 2 / 3], [1 / 3, 1.0]]])  # min-max
    close(seed.view_map(E, (2, 2)), [[[0.0, 0.6], [0.2, 1.0]]])  # e⁺ / max
    close(off.normalised_map(torch.full((1, 2, 2), 7.0), (2, 2)), torch.zeros(1, 2, 2))  # constant: no region


def test_perturbation_inputs():
    x = torch.ones(1, 1, 2, 2)
    keep, drop = off.perturbation_inputs(x, E)
    close(keep, [[[[0.0, 1.0], [0.0, 1.0]]]])  # normalised map > 0.5
    close(drop, [[[[1.0, 0.0], [1.0, 0.0]]]])  # the complement
    keep, drop = seed.perturbation_inputs(x, E)
    close(keep, [[[[0.0, 0.6], [0.2, 1.0]]]])  # soft e⁺
    close(drop, [[[[1.0, 0.0], [0.0, 0.0]]]])  # soft e⁻


def test_official_region_is_the_8_bit_image_it_stores():
    """floor(255 · 0.501) = 127 → 0.498, not above 0.5; floor(255 · 0.503) = 128 → 0.502."""
    e = torch.tensor([[[0.0, 0.501], [0.503, 1.0]]])
    close(off.region(e, (2, 2)), [[[0.0, 0.0], [1.0, 1.0]]])


def test_segmentation_iou():
    m = torch.tensor([[[False, True], [True, True]]])
    close(off.segmentation_iou(E, m), [(2 + 1e-5) / (3 + 1e-5)])  # region {(0,1), (1,1)} vs 3 mask pixels
    close(seed.segmentation_iou(E, m), [1.0])  # top-3 pixels of e⁺: exactly the mask
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    close(off.segmentation_iou(E, empty), [1e-5 / (2 + 1e-5)])
    assert torch.isnan(seed.segmentation_iou(E, empty))[0]


P_KEEP, P_DROP, IOU = np.array([0.8, 0.4]), np.array([0.2, 0.4]), np.array([0.5, 1.0])


def test_ecs():
    ratio = (0.6 + 1e-5) / (0.3 + 1e-5)  # ratio of the mean probabilities, times the mean IoU
    assert off.ecs(P_KEEP, P_DROP, IOU) == pytest.approx((ratio * 0.75, ratio, 0.75))
    # seed: mean over images of r/(1+r) × IoU, r = [4, 1]
    assert seed.ecs(P_KEEP, P_DROP, IOU) == pytest.approx((0.45, 0.65, 0.75))
    assert off.sample_ecs(P_KEEP, P_DROP, IOU) == pytest.approx([0.80001 / 0.20001 * 0.5, 1.0])
    assert seed.sample_ecs(P_KEEP, P_DROP, IOU) == pytest.approx([0.4, 0.5])


def test_ics():
    i = torch.tensor([[1.0, 0.0, 0.2, 0.5], [0.9, 0.1, 0.0, 0.8]])
    # official: each sample min-max normalised and > 0.3 → both [1, 0, 0, 1]: density 0.5, similarity 2/2
    sim = 2 / (2 + 4e-5)
    assert off.ics(i) == pytest.approx((sim / 0.50001, 1 / 0.50001, sim))
    # seed: i⁺ = [1, 0, .2, .5], [1, 1/9, 0, 8/9]; simplicity 0.4625, homogeneity (1 + .5 + .5 + .78125)/4
    assert seed.ics(i) == pytest.approx((0.4625 * 0.6953125, 0.4625, 0.6953125))


def test_ics_falls_as_channel_use_spreads_only_officially():
    one = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    three = torch.tensor([[0.0, 1.0, 1.0, 1.0]] * 2)
    assert off.ics(one)[0] == pytest.approx(4, rel=1e-4) and off.ics(three)[0] == pytest.approx(4 / 3, rel=1e-4)
    assert seed.ics(one)[0] == pytest.approx(0.25) and seed.ics(three)[0] == pytest.approx(0.75)


NANO = ["layers.0.blocks.0", "layers.1.blocks.0", "layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]


def test_repair_blocks():
    assert off.repair_blocks(NANO) == (["layers.0.blocks.0"], ["layers.3.blocks.0"])
    t = [f"layers.{i}.blocks.{j}" for i, d in enumerate((2, 2, 8, 2)) for j in range(d)]  # vmamba-t
    assert off.repair_blocks(t) == (["layers.0.blocks.1"], ["layers.3.blocks.1"])  # official [0][0][1], [3][0][1]
    flat = [f"layers.{i}" for i in range(24)]  # Vim: its last layer for both
    assert off.repair_blocks(flat) == (["layers.23"], ["layers.23"])
    deep = ["layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0"]
    assert seed.repair_blocks(NANO) == (deep, deep)


def test_template_images_and_templates():
    labels, p = np.array([0, 0, 0, 1, 1]), np.array([0.2, 0.9, 0.5, 0.3, 0.8])
    assert list(off.pick_template_images(labels, 2, lambda: p)) == [1, 2, 4, 3]  # most confident first
    assert list(seed.pick_template_images(labels, 2, lambda: 1 / 0)) == [0, 1, 3, 4]  # the first ones
    i = torch.tensor([[1.0, 0.0, 0.2, 0.5], [0.8, 0.0, 0.4, 0.6], [0.0, 1.0, 0.0, 0.0]])
    correct = np.array([True, True, False])
    # official: class mean [.6, 1/3, .2, 11/30], min-max → [1, 1/3, 0, 5/12] > 0.3, correctness ignored
    close(off.template(i, correct), [1.0, 1.0, 0.0, 1.0])
    close(seed.template(i, correct), [1.0, 0.0, 0.35, 0.625])  # mean i⁺ of the correct ones


def test_external_loss():
    e = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]]])
    m = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(off.external_loss(e, m)) == pytest.approx((3 + 2) / 2 / 2)  # Σ e ⊙ (1 − m) / B, × 1/B
    assert float(seed.external_loss(e, m)) == pytest.approx((0.75 + 1.0) / 2)  # 1 − share on the object
    # official: the map is upsampled to the mask (bilinear), not the mask pooled to the map
    one = torch.tensor([[[2.0]]])
    assert float(off.external_loss(one, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))) == pytest.approx(6.0)


def test_internal_loss():
    i = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(off.internal_loss(i, t)) == pytest.approx(3 / 6 / 2)  # mean(i ⊙ (1 − T)), × 1/B
    assert float(seed.internal_loss(i, t)) == pytest.approx((2 / 3 + 0.25) / 2)


def test_repair_losses_sum_states_and_average_blocks():
    ones = torch.ones(2, 1, 2)
    corr = Correlations(torch.zeros(2, 3), torch.zeros(2, 3),
                        {("a", "c"): ones, ("a", "s"): 2 * ones, ("b", "c"): 3 * ones, ("b", "s"): 0 * ones},
                        {("b", "x"): torch.ones(2, 3)})
    masks = torch.zeros(2, 1, 2)
    ext, itn = get_definition("official").repair_losses(corr, masks, torch.tensor([0, 1]),
                                                        list(corr.external), [("b", "x")],
                                                        {"b": torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])})
    # per map Σ e / B²: (1 + 2 + 3 + 0) · 4 / 4, over 2 blocks; internal mean([0,1,1],[1,1,1]) / 2
    assert float(ext) == pytest.approx(6 * 4 / 4 / 2) and float(itn) == pytest.approx(5 / 6 / 2)
