"""Metric definitions checked against hand computations (ImageNet-C CE / relative CE, ECE)."""

import numpy as np
import pandas as pd
import pytest
import torch

from mamba_bench.eval.metrics import (
    add_clean_drop,
    corruption_errors,
    expected_calibration_error,
    nonfinite,
    per_image,
    summarize,
)


def test_per_image_top1_top5_nll():
    logits = torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
                           [0.0, 1.0, 0.5, 0.2, 0.1, -1.0, 5.0],
                           [0.0, 1.0, 0.5, 0.2, 0.1, -1.0, 5.0]])
    labels = torch.tensor([0, 1, 5])
    out = per_image(logits, labels)
    assert out["correct"].tolist() == [True, False, False]
    assert out["correct5"].tolist() == [True, True, False]  # label 5 ranks 7th in row 3
    expected = -torch.log_softmax(logits, 1)[torch.arange(3), labels]
    assert torch.allclose(out["nll"], expected)
    assert out["confidence"][1] == pytest.approx(float(torch.softmax(logits[1], 0).max()))


def test_per_image_ties_and_nan_logits():
    # all logits equal: the prediction is the first of the top-5, so right at top-1 ⇒ right at top-5
    out = per_image(torch.zeros(3, 10), torch.tensor([0, 4, 9]))
    assert out["pred"].tolist() == torch.zeros(3, 10).topk(5).indices[:, 0].tolist()
    assert not (out["correct"] & ~out["correct5"]).any()
    # NaN logits: a NaN confidence that nonfinite() counts (the run stops on it)
    logits = torch.randn(4, 6)
    logits[1, 2] = float("nan")
    logits[3] = float("nan")
    per = {k: v.numpy() for k, v in per_image(logits, torch.tensor([0, 1, 2, 3])).items()}
    assert nonfinite(per) == 2 and np.isnan(per["confidence"][[1, 3]]).all()
    assert np.isfinite(per["confidence"][[0, 2]]).all()


def test_ece_hand_computed():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    # bin (0.933,1.0]: acc 0.5, conf 0.95 → gap 0.45, weight 0.5; bin ~0.55: acc 1.0, conf 0.55 → 0.45, 0.5
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45)
    assert expected_calibration_error(np.array([0.8, 0.8]), np.array([1, 1])) == pytest.approx(0.2)


def test_summarize_percentages():
    per = {"correct": np.array([1, 0, 1, 1], bool), "correct5": np.array([1, 1, 1, 1], bool),
           "nll": np.array([0.1, 2.0, 0.2, 0.3]), "confidence": np.array([0.9, 0.6, 0.8, 0.7])}
    s = summarize(per)
    assert s["n"] == 4 and s["top1"] == 75.0 and s["top5"] == 100.0
    assert s["nll"] == pytest.approx(0.65)


def _table():
    rows = []
    # model A (baseline): clean 80; noise s1 70, s2 60 ; blur s1 75 s2 65
    # model B: clean 90; noise s1 85, s2 70 ; blur s1 80 s2 80
    for model, clean, vals in [("A", 80, {"noise": [70, 60], "blur": [75, 65]}),
                               ("B", 90, {"noise": [85, 70], "blur": [80, 80]})]:
        rows.append({"model": model, "dataset": "d", "corruption": "clean", "severity": 0, "top1": clean})
        for c, v in vals.items():
            for s, t in enumerate(v, 1):
                rows.append({"model": model, "dataset": "d", "corruption": c, "severity": s, "top1": t})
    return pd.DataFrame(rows)


def test_corruption_error_imagenet_c_definitions():
    out = corruption_errors(_table(), baseline="A").set_index(["model", "corruption"])
    # CE_noise(B) = (15 + 30) / (30 + 40) ; relative = ((15-10) + (30-10)) / ((30-20) + (40-20))
    assert out.loc[("B", "noise"), "ce"] == pytest.approx(45 / 70 * 100)
    assert out.loc[("B", "noise"), "relative_ce"] == pytest.approx(25 / 30 * 100)
    assert out.loc[("B", "blur"), "ce"] == pytest.approx(40 / 60 * 100)
    assert out.loc[("B", "blur"), "relative_ce"] == pytest.approx(20 / 20 * 100)
    assert out.loc[("A", "noise"), "ce"] == pytest.approx(100.0)
    assert out.loc[("B", "mean"), "ce"] == pytest.approx((45 / 70 + 40 / 60) / 2 * 100)
    assert out.loc[("B", "mean"), "mean_top1"] == pytest.approx((77.5 + 80) / 2)


def test_zero_baseline_denominator_is_nan_for_every_model_and_left_out_of_the_means():
    t = _table()
    # the baseline A errs on blur exactly as on clean images: relative CE of blur is 0 / 0 for A, x / 0 for B
    t.loc[(t.model == "A") & (t.corruption == "blur"), "top1"] = 80
    out = corruption_errors(t, baseline="A").set_index(["model", "corruption"])
    assert out.loc[[("A", "blur"), ("B", "blur")], "relative_ce"].isna().all()
    assert np.isfinite(out["relative_ce"].dropna()).all()  # never ±inf
    # both models' relative mCE is over noise alone
    assert out.loc[("A", "mean"), "relative_ce"] == pytest.approx(100.0)
    assert out.loc[("B", "mean"), "relative_ce"] == pytest.approx(25 / 30 * 100)
    assert out.loc[("B", "blur"), "ce"] == pytest.approx(40 / 40 * 100)  # CE itself stays defined


def test_without_baseline_ce_is_nan_but_means_exist():
    out = corruption_errors(_table(), baseline=None)
    assert out["ce"].isna().all()
    assert set(out.corruption) == {"noise", "blur", "mean"}


def test_clean_drop():
    out = add_clean_drop(_table())
    b = out[(out.model == "B") & (out.corruption == "noise")]
    assert b["top1_drop"].tolist() == [5, 20]
    assert out[out.corruption == "clean"]["top1_drop"].eq(0).all()
