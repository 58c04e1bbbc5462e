"""``bench models`` with several scan backends and precisions side by side; ``bench scan``'s device option."""

import pytest

from mamba_bench.errors import MambaBenchError
from mamba_bench.eval.bench_ssm import bench_models


def test_bench_models_one_row_per_scan_backend_for_mamba_models_only():
    res = bench_models(models=["vmamba-nano", "resnet18"], batch=1, threads=1, repeats=1, device="cpu",
                       backends=["cpu", "torch", "cpu"])
    rows = [(r["model"], r["scan_backend"], r["precision"]) for r in res["rows"]]
    assert rows == [("vmamba-nano", "cpu", "fp32"), ("vmamba-nano", "torch", "fp32"), ("resnet18", None, "fp32")]
    assert all(r["images_per_second"] >= r["images_per_second_median"] > 0 for r in res["rows"])
    assert res["scan_backends"] == ["cpu", "torch"] and res["precisions"] == ["fp32"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(backends=["triton"]), "scan backend 'triton' is not available on cpu here; available: auto, cpu"),
    (dict(backends=["fast"]), "unknown --scan-backend 'fast'"),
    (dict(precisions=["bf16"]), "--precision bf16 (autocast) is for --device cuda"),
    (dict(precisions=["fp16"]), "unknown --precision 'fp16'"),
])
def test_bench_models_refuses_what_it_cannot_time(kwargs, message):
    with pytest.raises(MambaBenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bench_models(models=["vmamba-nano"], batch=1, threads=1, repeats=1, device="cpu", **kwargs)


def test_cli_bench_models_unavailable_backend_is_one_line(cli):
    r = cli("bench", "models", "-m", "vmamba-nano", "--device", "cpu", "--scan-backend", "cuda", "--repeats", "1")
    assert r.returncode == 2 and "scan backend 'cuda' is not available on cpu" in r.stderr
    assert "Traceback" not in r.stderr
