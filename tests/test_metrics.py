"""Metric definitions checked against hand computations (ImageNet-C CE / relative CE, ECE)."""

import numpy as np
import pandas as pd
import pytest
import torch

from mamba_bench.errors import MambaBenchError
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
        rows.append({"model": model, "dataset": "d", "corruption": "clean", "severity": 0, "top1": clean, "n": 100})
        for c, v in vals.items():
            for s, t in enumerate(v, 1):
                rows.append({"model": model, "dataset": "d", "corruption": c, "severity": s, "top1": t, "n": 100})
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


def _cells(model, clean_errors, errors, n=450, corruption="noise"):
    """Rows of one model: clean and severities 1.. with the given numbers of wrong images out of n."""
    rows = [{"model": model, "dataset": "d", "corruption": "clean", "severity": 0, "n": n,
             "top1": (n - clean_errors) / n * 100}]
    rows += [{"model": model, "dataset": "d", "corruption": corruption, "severity": s, "n": n,
              "top1": (n - e) / n * 100} for s, e in enumerate(errors, 1)]
    return rows


def test_a_true_zero_denominator_is_zero_not_float_noise():
    """n = 450, the baseline errs on 5 clean images and 4, 6, 5, 4, 6 corrupted ones: Σ (E_s - E_clean) is
    exactly 0, which float arithmetic made -2.8e-14 (a relative CE of ~1e16 %)."""
    t = pd.DataFrame(_cells("A", 5, [4, 6, 5, 4, 6]) + _cells("B", 10, [30, 40, 50, 60, 70]))
    out = corruption_errors(t, baseline="A").set_index(["model", "corruption"])
    assert np.isnan(out.loc[("B", "noise"), "relative_ce"])
    assert "denominator is zero" in out.loc[("B", "noise"), "note"]
    assert out.loc[("B", "noise"), "ce"] == pytest.approx(250 / 25 * 100)


def test_a_negative_relative_denominator_is_undefined_not_a_sign_flip():
    """The baseline better on corrupted than clean images: a candidate that drops 10 points would get -2000 %."""
    t = pd.DataFrame(_cells("A", 50, [49]) + _cells("B", 0, [45], n=450))
    out = corruption_errors(t, baseline="A").set_index(["model", "corruption"])
    assert np.isnan(out.loc[("B", "noise"), "relative_ce"]) and np.isnan(out.loc[("B", "mean"), "relative_ce"])
    assert "errs less on corrupted than on clean" in out.loc[("B", "noise"), "note"]


def _standard_r50():
    import pathlib

    df = pd.read_csv(pathlib.Path(__file__).with_name("data") / "robustbench_standard_r50_imagenet_c.csv", comment="#")
    df["top1"] = df["accuracy"] * 100
    df["n"] = 5000  # RobustBench's ImageNet-C subset
    df["model"], df["dataset"] = "standard_r50", "imagenet-c"
    return df[["model", "dataset", "corruption", "severity", "n", "top1"]]


def test_published_alexnet_table_reproduces_robustbench_standard_r50_mce(tmp_path):
    """RobustBench's per-severity Standard_R50 accuracies with the paper's AlexNet errors give mCE 76.37
    (RobustBench publishes 76.38 with its own re-evaluated AlexNet row)."""
    from mamba_bench.eval.baselines import load_baseline_table

    r50 = _standard_r50()
    alex = load_baseline_table("alexnet")
    assert len(alex.standard) == 15 and len(alex.errors) == 19 * 5
    out = corruption_errors(r50, None, alex).set_index(["model", "corruption"])
    assert out.loc[("standard_r50", "mean"), "ce"] == pytest.approx(76.367, abs=0.01)
    assert out.loc[("standard_r50", "gaussian_noise"), "ce"] == pytest.approx(3.4268 / 4.43214 * 100, abs=1e-3)
    # relative CE needs AlexNet's clean error, which the published table does not give: NaN with the reason
    assert np.isnan(out.loc[("standard_r50", "mean"), "relative_ce"])
    # the same table as an external CSV (--baseline-table) gives the same mCE
    from mamba_bench.eval.baselines import PUBLISHED

    ext = load_baseline_table(str(PUBLISHED["alexnet"]))
    ext_out = corruption_errors(r50, None, ext).set_index(["model", "corruption"])
    assert ext_out.loc[("standard_r50", "gaussian_noise"), "ce"] == out.loc[("standard_r50", "gaussian_noise"), "ce"]
    # an incomplete run never reports the published mCE: one corruption missing → NaN with the reason
    partial = corruption_errors(r50[r50.corruption != "fog"], None, alex).set_index(["model", "corruption"])
    assert np.isnan(partial.loc[("standard_r50", "mean"), "ce"])
    assert "incomplete here (fog)" in partial.loc[("standard_r50", "mean"), "note"]
    # and a missing severity leaves that corruption's CE undefined (no sum over other severities)
    some = r50[~((r50.corruption == "snow") & (r50.severity == 5))]
    assert np.isnan(corruption_errors(some, None, alex).set_index(["model", "corruption"])
                    .loc[("standard_r50", "mean"), "ce"])


def test_baseline_table_from_a_csv_with_clean_row_gives_relative_ce(tmp_path):
    from mamba_bench.eval.baselines import load_baseline_table

    f = tmp_path / "base.csv"
    f.write_text("corruption,severity,top1\nclean,0,80\nnoise,1,70\nnoise,2,60\n")
    table = load_baseline_table(str(f))
    t = _table()
    t = t[(t.model == "B") & (t.corruption != "blur")]
    out = corruption_errors(t, None, table).set_index(["model", "corruption"])
    assert out.loc[("B", "noise"), "ce"] == pytest.approx(45 / 70 * 100)
    assert out.loc[("B", "noise"), "relative_ce"] == pytest.approx(25 / 30 * 100)
    f.write_text("corruption,severity,top1\nnoise,1,170\n")
    with pytest.raises(MambaBenchError, match=r"must lie in \[0, 1\]"):
        load_baseline_table(str(f))


def test_top5_is_undefined_with_five_classes_or_fewer():
    per = {"correct": np.array([True, False]), "correct5": np.array([True, True]),
           "nll": np.array([0.1, 2.0]), "confidence": np.array([0.9, 0.4])}
    assert np.isnan(summarize(per, num_classes=5)["top5"])
    assert summarize(per, num_classes=6)["top5"] == 100.0
