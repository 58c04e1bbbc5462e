"""GPU-pipeline options that CPU can check: out-of-memory back-off and torch.compile."""

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
