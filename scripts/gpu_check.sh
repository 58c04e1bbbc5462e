#!/usr/bin/env bash
# The GPU figures of the pipeline (issue 8), in two calls, on a bare CUDA machine that cannot reach a
# package index, e.g. an H100/H200 image with python3 + torch + timm + nvcc but no imgaug / mamba-ssm.
#
#   make gpu-prep                 # here, with a package index: fills .gpu/ (git-ignored, ~6 MB)
#   set -o pipefail; OUT=... bash scripts/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log
#                                 # there, from the repository root, with .gpu/ copied along
#
# Steps (STEPS="..." picks some; a second call on the same machine skips the build):
#   install   the carried wheels (imaug, its corruption data, shapely) into /tmp/mb-site
#   build     mamba-ssm's selective-scan kernel alone from its sdist (~2.5 min on 16 cores; CUDA_ARCH=90)
#   check     cuda vs torch vs ref scan backends, then where the loop makes the host wait
#   tiny      vmamba-t, swin-t, convnext-t: end-to-end vs model-only (the ratio), and from disk
#   base      vmamba-b, swin-b, convnext-b: the same (not from disk), and the report's study projected
#   compile   the tiny models again with --compile (not from disk)
# All steps take more than one 10-minute device command: on a warm machine run
#   STEPS="install build check tiny", then STEPS="install base compile" (the build is kept in /tmp).
# Output goes to $OUT (default /tmp/mb-gpu): build.log and one bench_corrupt.json per bench, each
# written as its step ends, so a run cut short keeps what it finished.
set -uo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/mb-gpu}
PY=${PY:-python3}
[[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the build step changes directory
STEPS=${STEPS:-install build check tiny base compile}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
BATCH=${BATCH:-128}
IMAGES=${IMAGES:-256}
SITE=/tmp/mb-site
SRC=/tmp/mb-mamba
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
SDIST=$(ls "$REPO"/.gpu/mamba_ssm-*.tar.gz 2>/dev/null | head -1)
MAMBA=$SRC/$(basename "${SDIST:-none}" .tar.gz)
export PYTHONPATH=$SITE:$REPO:$SRC:$MAMBA${PYTHONPATH:+:$PYTHONPATH}
log() { echo "[$(date +%T)] $*"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
bench() {  # NAME ARGS...: one bench pipeline into $OUT/NAME/bench_corrupt.json
    local name=$1; shift
    log "bench pipeline $name: $*"
    "$PY" -m mamba_bench bench pipeline --device "${DEVICE:-cuda}" --batch-size "$BATCH" --workers "$WORKERS" \
        --images "$IMAGES" --out "$OUT/$name" "$@" || log "bench $name failed (rc $?)"
}

log "repo $REPO, $(nproc) cores, steps: $STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if has install; then
    ls "$REPO"/.gpu/*.whl >/dev/null 2>&1 || { log "no wheels in .gpu/: run 'make gpu-prep' first"; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$REPO"/.gpu/*.whl || exit 2
fi
"$PY" -c "import torch, timm, imgaug; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm',
timm.__version__, 'imgaug', imgaug.__version__)" || { log "python stack incomplete"; exit 2; }
if has build && ! ls "$SRC"/selective_scan_cuda*.so >/dev/null 2>&1; then
    [[ -n "$SDIST" ]] || { log "no mamba_ssm sdist in .gpu/"; exit 2; }
    mkdir -p "$SRC" && tar xzf "$SDIST" -C "$SRC" || exit 2
    # only the selective-scan interface is imported: the package's __init__ pulls in every module
    echo "__version__ = \"$(basename "$MAMBA" | sed 's/^mamba_ssm-//')\"" > "$MAMBA/mamba_ssm/__init__.py"
    log "building selective_scan_cuda (CUDA_ARCH=${CUDA_ARCH:-90})"
    (cd "$SRC" && SRC=$(basename "$MAMBA") MAX_JOBS=$(nproc) "$PY" "$REPO/scripts/build_selective_scan_cuda.py" \
        build_ext --inplace >"$OUT/build.log" 2>&1) && log "build done" || {
        log "build failed: tail of build.log"; tail -20 "$OUT/build.log"; }
fi
"$PY" -c "from mamba_bench.ops.selective_scan import available_backends as a; import torch
print('scan backends on cuda:', a(torch.device('cuda')))"
if has check; then
    log "check_cuda_backend"; "$PY" scripts/check_cuda_backend.py || log "check_cuda_backend failed"
    log "check_cuda_syncs"; "$PY" scripts/check_cuda_syncs.py || log "check_cuda_syncs failed"
fi
has tiny && bench tiny
has base && bench base --no-from-disk --model vmamba-b --model swin-b --model convnext-b
has compile && bench compile --no-from-disk --compile
log "done"
