#!/usr/bin/env bash
# All the GPU figures of the Triton backend (issue 22) in ONE call that builds nothing (Triton compiles the
# kernels at first use), on a bare CUDA machine that cannot reach a package index: an H100/H200 image with
# python3 + torch (+ its Triton) + timm but no imgaug; meant to end within 8 minutes on one GPU.
#
#   make gpu-prep                       # here, with a package index: fills .gpu/ (git-ignored, ~6 MB)
#   set -o pipefail; bash scripts/gpu_check.sh OUT_DIR 2>&1 | tee OUT_DIR/gpu_check.log
#                                       # there, from the repository root, with .gpu/ copied along
#
# The JSON goes into OUT_DIR (the first argument; else $OUT; else /tmp/mb-gpu), each file written as its
# step ends, so a run cut short keeps what it finished. Steps (STEPS="..." picks some):
#   install   the carried wheels (imaug, its corruption data, shapely) into /tmp/mb-site (for `pipeline`)
#   check     scripts/check_triton_backend.py: triton vs ref on the GPU, outputs and gradients, d_state 1 and
#             16, fp32 and bf16; fused SS2D vs cross-scan → ref → merge; VMamba-T logits; the fused SS2D vs
#             unfused timing at VMamba-T stage 1, batch 128                    → OUT/check_triton.json
#   scan      bench scan --device cuda at VMamba-T's stage-1 shape: triton, torch, ref (+ cuda)
#                                                                              → OUT/scan/bench_scan.json
#   models    bench models --device cuda, batch 128, fp32 and bf16 in one run: vmamba-t/b with the triton
#             and torch (+ cuda) scans next to swin-t/b, convnext-t/b       → OUT/models/bench_models.json
#   pipeline  bench pipeline: vmamba-b, swin-b, convnext-b end-to-end vs model-only, the report's study
#             projected (not from disk)                                      → OUT/pipeline/bench_corrupt.json
# Default: install check scan models pipeline. Optional, not in the default (they are outside the 8 minutes):
#   mamba     builds mamba-ssm's selective-scan kernel alone from its sdist (make gpu-prep-mamba-ssm; ~2.5 min
#             on 16 cores, CUDA_ARCH=90) and runs scripts/check_cuda_backend.py; the scan and models steps
#             after it then time backend `cuda` too. Put it first: STEPS="install mamba check scan models"
#   syncs     scripts/check_cuda_syncs.py: where the evaluation loop makes the host wait for the GPU
#   tiny      bench pipeline for vmamba-t, swin-t, convnext-t, also from disk  → OUT/tiny/bench_corrupt.json
#   compile   the same T models with --compile (not from disk)                 → OUT/compile/bench_corrupt.json
set -uo pipefail
REPO=$(pwd)
OUT=${1:-${OUT:-/tmp/mb-gpu}}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PY:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the build step changes directory
STEPS=${STEPS:-install check scan models pipeline}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
BATCH=${BATCH:-128}
IMAGES=${IMAGES:-256}
SITE=/tmp/mb-site
SRC=/tmp/mb-mamba
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
SDIST=$(ls "$REPO"/.gpu/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
MAMBA=$SRC/$(basename "${SDIST:-none}" .tar.gz)
export PYTHONPATH=$SITE:$REPO:$SRC:$MAMBA${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
mb() { "$PY" -m mamba_bench "$@"; }
# each step has a wall-clock cap, so that one stuck step cannot take the others' time (seconds; 0: none)
cap() { local s=$1; shift; if [[ $s == 0 ]]; then "$@"; else timeout --signal=INT --kill-after=20 "$s" "$@"; fi; }

log "repo $REPO, out $OUT, $(nproc) cores, steps: $STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if has install; then
    if ls "$REPO"/.gpu/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$REPO"/.gpu/*.whl || log "wheel install failed"
    else
        log "no wheels in .gpu/ (make gpu-prep): bench pipeline will fail without imgaug"
    fi
fi
"$PY" -c "import torch, timm, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton',
triton.__version__, 'timm', timm.__version__, 'gpu', torch.cuda.get_device_name())" || { log "python stack incomplete"; exit 2; }
if has mamba && ! ls "$SRC"/selective_scan_cuda*.so >/dev/null 2>&1; then
    if [[ -z "$SDIST" ]]; then
        log "no mamba_ssm sdist in .gpu/ (make gpu-prep-mamba-ssm): skipping the mamba-ssm comparison"
    else
        mkdir -p "$SRC" && tar xzf "$SDIST" -C "$SRC"
        # only the selective-scan interface is imported: the package's __init__ pulls in every module
        echo "__version__ = \"$(basename "$MAMBA" | sed 's/^mamba_ssm-//')\"" > "$MAMBA/mamba_ssm/__init__.py"
        log "building selective_scan_cuda (CUDA_ARCH=${CUDA_ARCH:-90})"
        (cd "$SRC" && SRC=$(basename "$MAMBA") MAX_JOBS=$(nproc) "$PY" "$REPO/scripts/build_selective_scan_cuda.py" \
            build_ext --inplace >"$OUT/build.log" 2>&1) && log "build done" || {
            log "build failed: tail of build.log"; tail -20 "$OUT/build.log"; }
    fi
fi
BACKENDS=$("$PY" -c "from mamba_bench.ops.selective_scan import available_backends as a
print(' '.join(b for b in a('cuda') if b != 'ref'))")
log "scan backends on cuda: $BACKENDS"
SB=(); for b in $BACKENDS; do SB+=(--scan-backend "$b"); done
if has mamba && [[ " $BACKENDS " == *" cuda "* ]]; then
    log "check_cuda_backend (mamba-ssm)"; cap 300 "$PY" scripts/check_cuda_backend.py || log "check_cuda_backend failed"
fi
if has check; then
    log "check_triton_backend"; cap 100 "$PY" scripts/check_triton_backend.py "$OUT" || log "check_triton_backend: rc $?"
fi
if has scan; then
    BK=(); for b in $BACKENDS ref; do BK+=(--backend "$b"); done
    log "bench scan: ${BK[*]}"
    cap 110 mb bench scan --device cuda "${BK[@]}" --d-state 1 --d-state 16 --out "$OUT/scan" || log "bench scan: rc $?"
fi
if has models; then
    log "bench models: ${SB[*]}, fp32 and bf16"
    cap 140 mb bench models --device cuda --batch-size "$BATCH" --repeats 5 --precision fp32 --precision bf16 "${SB[@]}" \
        -m vmamba-t -m vmamba-b -m swin-t -m swin-b -m convnext-t -m convnext-b --out "$OUT/models" \
        || log "bench models: rc $?"
fi
if has pipeline; then
    log "bench pipeline: vmamba-b swin-b convnext-b"
    cap 170 mb bench pipeline --device cuda --batch-size "$BATCH" --workers "$WORKERS" --images "$IMAGES" --no-from-disk \
        --model vmamba-b --model swin-b --model convnext-b --out "$OUT/pipeline" || log "bench pipeline: rc $?"
fi
for step in tiny compile; do
    has $step || continue
    extra=(); [[ $step == compile ]] && extra=(--compile --no-from-disk)
    log "bench pipeline $step: vmamba-t swin-t convnext-t ${extra[*]}"
    cap 0 mb bench pipeline --device cuda --batch-size "$BATCH" --workers "$WORKERS" --images "$IMAGES" "${extra[@]}" \
        --out "$OUT/$step" || log "bench pipeline $step: rc $?"
done
if has syncs; then
    log "check_cuda_syncs"; cap 300 "$PY" scripts/check_cuda_syncs.py || log "check_cuda_syncs failed"
fi
log "done"
