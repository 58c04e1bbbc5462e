"""Build mamba-ssm's ``selective_scan_cuda`` extension alone (when no mamba-ssm wheel matches your
torch/CUDA): about 2.5 minutes with 16 cores for one architecture, instead of the whole package.

    tar xzf mamba_ssm-2.3.2.post1.tar.gz          # the sdist from PyPI
    MAX_JOBS=16 python build_selective_scan_cuda.py build_ext --inplace
    PYTHONPATH=.:<dir holding mamba_ssm/ops and mamba_ssm/utils> python scripts/check_cuda_backend.py

Set CUDA_ARCH (default 90 = H100/H200) for other GPUs. This is how the CUDA figures in the README were
taken (torch 2.11 + CUDA 13, mamba-ssm 2.3.2.post1, whose __init__ was trimmed to a version line
so that only the selective-scan interface is imported).
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

ARCH = os.environ.get("CUDA_ARCH", "90")
src = os.environ.get("SRC", "mamba_ssm-2.3.2.post1") + "/csrc/selective_scan/"
files = (["selective_scan.cpp"] + [f"selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")]
         + [f"selective_scan_bwd_{t}_{k}.cu" for t in ("fp32", "fp16", "bf16") for k in ("real", "complex")])
nvcc = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
        "-gencode", f"arch=compute_{ARCH},code=sm_{ARCH}", "--threads", "2"]
setup(name="selective_scan_cuda",
      ext_modules=[CUDAExtension("selective_scan_cuda", [src + f for f in files], include_dirs=[src],
                                 extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc})],
      cmdclass={"build_ext": BuildExtension})
