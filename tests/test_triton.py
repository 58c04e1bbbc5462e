"""Every Triton kernel (selective scan forward and backward, fused SS2D forward) against ``ref``, outputs and
gradients, in Triton's CPU interpreter, so that CI without a GPU checks them.

TRITON_INTERPRET=1 has to be set before Triton is imported, and another test module of this pytest
process may already have imported it: the cases run in one fresh process (tests/triton_interp_cases.py,
~30 s on 2 cores) and each test here asserts on its part of that process's JSON.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FP32_CASES = ["scan_d1_groups4", "scan_d16_blocks", "scan_constB_sharedC", "scan_constC_padded_plain",
              "scan_both_const", "scan_d1_default_blocks", "scan_d16_default_blocks", "ss2d_d1", "ss2d_d4",
              "ss2d_d16_default_blocks", "vmamba_nano", "umamba_mamba_block"]
BF16_CASES = ["scan_bf16_d1", "scan_bf16_d16"]
FP32_MAX_REL = 1e-5  # max |triton - ref| / max |ref|, per tensor (the target)
BF16_MAX_REL = 1e-2  # bf16 outputs and gradients: one bf16 rounding is 2^-8 relative

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="Triton is not installed (torch's aarch64/macOS wheels have none): "
                                       "the triton backend cannot be tested here")


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_interp_cases.py")], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_case_ran(results):
    assert set(results) - {"_vectorised_interpreter_scan"} == set(FP32_CASES + BF16_CASES)


@pytest.mark.parametrize("case", FP32_CASES)
def test_fp32_outputs_and_gradients_match_ref(results, case):
    errors = results[case]["errors"]
    if case.startswith("scan_"):  # output, last state, no-grad launch, and the gradient of every input given
        assert {"out", "last_state", "out_no_grad", "grad_u", "grad_delta", "grad_A", "grad_B", "grad_C"} <= set(errors)
    bad = {k: v for k, v in errors.items() if not v <= FP32_MAX_REL}
    assert not bad, f"{case}: relative errors above {FP32_MAX_REL}: {bad}"


@pytest.mark.parametrize("case", BF16_CASES)
def test_bf16_inputs_fp32_state(results, case):
    errors = results[case]["errors"]
    assert errors["last_state"] <= FP32_MAX_REL  # the state is fp32 whatever the inputs' dtype
    bad = {k: v for k, v in errors.items() if not v <= BF16_MAX_REL}
    assert not bad, f"{case}: relative errors above {BF16_MAX_REL}: {bad}"
