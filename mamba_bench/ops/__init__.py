"""Low-level ops: the selective scan (several backends behind one signature) and the 2D cross-scan."""

from mamba_bench.ops.cross_scan import cross_merge, cross_scan
from mamba_bench.ops.selective_scan import available_backends, selective_scan, selective_scan_ref

__all__ = ["available_backends", "cross_merge", "cross_scan", "selective_scan", "selective_scan_ref"]
