"""GPU check of the selective-scan backends: cuda (mamba-ssm) and torch vs ref, outputs and gradients,
fp32 and bf16, d_state 1 and 16; then VMamba-T's logits with the cuda vs the torch backend and vs CPU.

    python scripts/check_cuda_backend.py          # needs a CUDA GPU and mamba-ssm importable

Without a mamba-ssm wheel for your torch/CUDA, scripts/build_selective_scan_cuda.py builds just its
selective-scan extension (see that file).
"""
import torch

from mamba_bench.ops.selective_scan import available_backends, selective_scan

dev = torch.device("cuda")
print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "backends", available_backends(dev))
assert available_backends(dev)[0] == "cuda", "mamba-ssm not importable"


def inputs(b, d, length, n, groups, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(b, d, length, generator=g)
    delta = torch.randn(b, d, length, generator=g) * 0.5 - 1.0
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B = torch.randn(b, groups, n, length, generator=g)
    C = torch.randn(b, groups, n, length, generator=g)
    D = torch.randn(d, generator=g)
    bias = torch.randn(d, generator=g) * 0.1
    out = [u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype), D, bias]
    return [t.to(dev) for t in out]


worst = 0.0
for n in (1, 16):
    for dtype in (torch.float32, torch.bfloat16):
        for length in (3136, 777):
            ins = inputs(2, 96, length, n, 4, dtype)
            res = {}
            for backend in ("ref", "torch", "cuda"):
                w = [t.clone().requires_grad_() for t in ins]
                y = selective_scan(*w[:5], D=w[5], delta_bias=w[6], delta_softplus=True, backend=backend)
                gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dev, y.dtype)
                (y.float() * gy.float()).sum().backward()
                res[backend] = (y.detach().float(), [t.grad.float() for t in w])
            ry, rg = res["ref"]
            for backend in ("torch", "cuda"):
                y, gs = res[backend]
                ey = float((y - ry).abs().max() / ry.abs().max())
                eg = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))
                         for a, b in zip(gs, rg, strict=True))
                finite = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(a).all()) for a in gs)
                print(f"d_state {n:2d} {str(dtype):15s} L {length}: {backend:5s} vs ref  y rel {ey:.1e}  "
                      f"grads rel {eg:.1e}  finite {finite}")
                if dtype == torch.float32:
                    worst = max(worst, ey, eg)
print("worst fp32 relative error vs ref", f"{worst:.1e}")

# model level: the same VMamba-T weights with the cuda and torch backends, fp32
from mamba_bench.models.registry import get_spec  # noqa: E402

torch.manual_seed(0)
m = get_spec("vmamba-t").build().eval().to(dev)
x = torch.randn(4, 3, 224, 224, device=dev)
with torch.no_grad():
    m.set_scan_backend("cuda")
    a = m(x)
    m.set_scan_backend("torch")
    b = m(x)
    m.set_scan_backend("auto")
print(f"vmamba-t logits cuda vs torch backend (fp32): max |diff| {(a - b).abs().max().item():.2e}, "
      f"max |logit| {b.abs().max().item():.2f}")
m_cpu = m.cpu()
with torch.no_grad():
    d = m_cpu(x.cpu())
print("vmamba-t logits GPU cuda backend vs CPU numba backend: max |diff|", f"{(a.cpu() - d).abs().max().item():.2e}")
