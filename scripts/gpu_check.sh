#!/usr/bin/env bash
# GPU readiness check (issue 16, point 4): one command, at most 8 minutes on a lent GPU.
#
#   bash scripts/gpu_check.sh                # on the GPU machine
#   bash scripts/gpu_check.sh --cpu-dry-run  # here: every part at tiny sizes on the CPU (wiring check)
#   bash scripts/gpu_check.sh --prepare      # here, with internet: fetch the nvdiffrast wheel into .whl/
#
# Parts, in this order, each under its own time limit (`timeout`), none able to stop the others:
#   env              python, torch, CUDA, Triton, nvcc; the modules the parts need
#   nvdiffrast_build nvdiffrast's CUDA kernels are compiled at first use: built here, once, on its own clock
#   cuda_tests       pytest -m gpu on the test files holding CUDA tests (rasteriser backends, field capture)
#   raster_compare   cgof bench raster --compare: nvdiffrast vs the torch rasteriser, same meshes (face
#                    model mean + a random face + a sphere, 4 poses, 128 and 256): mask IoU, depth error
#   render_off       cgof bench render --widths 256 --capture off --batch 8: the default field and a 256-wide
#                    (reference-size) random field at 128 and 256, fast path in half precision, eager
#                    (--batch 8: 8 random views alone against the same 8 in one render_many call, the
#                    most the server's micro-batcher can gain there: issue 16's point 3 on the GPU)
#   render_compile   the same with --capture compile (torch.compile of the field's trunk)
#   train_bench      cgof bench train (reference and cpu curricula, both schedules, 64 px)
#   render_graphs    the same render bench with --capture graphs (CUDA graphs via torch.compile)
# Goal on an H100/H200 (issue 16): the 256-wide field's fast path at >= 100 fps at 128^2 and >= 30 fps
# at 256^2; the summary says whether the best capture mode met it.
#
# Output: one folder, $OUT if set, else ./gpu_check_out: summary.json (every part with a status ok |
# failed | skipped, its seconds, limit and figures), summary.md (the short table) and gpu_check.log
# (everything the parts printed). Three files, so it fits the device tool's eight. Exit status 1 when a
# part failed (a time-out counts as failed), 0 otherwise: a part skipped for a reason it states (no CUDA
# in a dry run, nvdiffrast not installable, the time budget spent) does not fail the run.
#
# Environment on the lent machine (/work/.library/device/README.md, KINDS.md): no internet; its
# python3 has torch with CUDA, Triton, numpy, scipy, safetensors, tqdm, imageio, pytest, nvcc and ninja,
# which is all the parts need (the editor's gradio/trimesh/plotly are not imported). Only nvdiffrast
# (PyPI: diffrp-nvdiffrast, pure Python, kernels built at first use) is missing: this script installs it
# from .whl/ (put there by --prepare and carried: run's carry [".whl"]), else from PyPI when reachable,
# else says so in one line and skips the nvdiffrast parts (the rasteriser then falls back to the torch
# backend on CUDA, so the render benches still run).
#
# A device session: `bash scripts/gpu_check.sh --prepare` here, then the device tool's run with
# command `bash scripts/gpu_check.sh`, carry [".whl"], timeout_s 560; the three files come back.
#
# Variables: PYTHON (default .venv/bin/python if present, else python3), OUT, GPU_CHECK_BUDGET (seconds,
# default 470 on the GPU, 240 in a dry run), NVDIFFRAST_VERSION (for --prepare, default 0.3.3.1).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

MODE=gpu
PREPARE=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) MODE=dry ;;
    --prepare) PREPARE=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3
fi

if [ "$PREPARE" = 1 ]; then
  mkdir -p .whl
  exec "$PY" -m pip download --no-deps --only-binary=:all: -d .whl "diffrp-nvdiffrast==${NVDIFFRAST_VERSION:-0.3.3.1}"
fi

OUT_DIR=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$W"' EXIT
START=$(date +%s)
if [ "$MODE" = gpu ]; then BUDGET=${GPU_CHECK_BUDGET:-470}; else BUDGET=${GPU_CHECK_BUDGET:-240}; fi
RESERVE=10  # seconds kept for the report

export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/cgof_torch_extensions}
if [ "$MODE" = dry ]; then
  # A shared CPU: one thread per process avoids oversubscription (orders of magnitude here).
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  DEV=cpu
else
  DEV=cuda
fi

log() { echo "$*" | tee -a "$LOG"; }

# run_part NAME MAX_SECONDS COMMAND...: stdout -> W/NAME.out, stderr -> W/NAME.err, both into the log;
# W/NAME.rc, .secs, .timeout. A part with W/NAME.skip is not run (the file says why).
run_part() {
  local name=$1 max=$2 left limit t0 rc
  shift 2
  if [ -f "$W/$name.skip" ]; then
    log "== $name: skipped: $(cat "$W/$name.skip")"
    return 0
  fi
  left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then
    echo "the time budget (${BUDGET} s) was spent before this part" > "$W/$name.skip"
    log "== $name: skipped: $(cat "$W/$name.skip")"
    return 0
  fi
  limit=$(( max < left ? max : left ))
  echo "$limit" > "$W/$name.timeout"
  log "== $name (limit ${limit} s): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" < /dev/null > "$W/$name.out" 2> "$W/$name.err"
  rc=$?
  echo "$rc" > "$W/$name.rc"
  echo $(( $(date +%s) - t0 )) > "$W/$name.secs"
  cat "$W/$name.err" "$W/$name.out" >> "$LOG"
  log "   $name: exit $rc after $(cat "$W/$name.secs") s"
  return 0
}

log "gpu_check ($MODE) in $ROOT, python $PY, output $OUT_DIR, budget ${BUDGET} s, started $(date -u +%FT%TZ)"

# ---- nvdiffrast: preinstalled, from .whl/, from PyPI, or skipped (one line) -----------------------------
SITE=/tmp/cgof_gpu_check_site
NVDR=1
have_nvdr() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('nvdiffrast') is None)" 2>/dev/null; }
if have_nvdr; then
  NVDR_HOW="nvdiffrast: already installed"
elif [ "$MODE" = dry ]; then
  NVDR=0; NVDR_HOW="nvdiffrast: not installed (dry run: no install attempted)"
else
  wheels=$(ls .whl/diffrp_nvdiffrast-*.whl 2>/dev/null | head -1)
  if [ -z "$wheels" ] && timeout 40 "$PY" -m pip download -q --retries 0 --timeout 10 --no-deps -d "$W/whl" diffrp-nvdiffrast >/dev/null 2>&1; then
    wheels=$(ls "$W"/whl/diffrp_nvdiffrast-*.whl 2>/dev/null | head -1)
    NVDR_FROM="PyPI"
  else
    NVDR_FROM=".whl/"
  fi
  if [ -n "$wheels" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target "$SITE" "$wheels" >> "$LOG" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    NVDR_HOW="nvdiffrast: installed from $NVDR_FROM ($(basename "$wheels"))"
  else
    NVDR=0
    NVDR_HOW="nvdiffrast: not installed, no wheel in .whl/ and PyPI unreachable (run --prepare here and carry .whl): nvdiffrast parts skipped"
  fi
fi
log "$NVDR_HOW"

# ---- the parts ----------------------------------------------------------------------------------------
CLI=("$PY" -m app.cli)
if [ "$MODE" = gpu ]; then
  R_SIZES=128,256; R_WIDTHS=256; R_REPEATS=20; R_REF=2; C_SIZES=128,256; R_BATCH=(--batch 8 --batch-rounds 3)
  TRAIN=(--device cuda)
  CAPTURES=(off compile graphs)
else
  R_SIZES=8; R_WIDTHS=16; R_REPEATS=1; R_REF=1; C_SIZES=16; R_BATCH=(--batch 2 --batch-rounds 1)
  TRAIN=(--device cpu --curricula cpu --samplings mesh --size 16 --steps 1 --warmup 0)
  # compile on the CPU costs tens of seconds per process; "auto" is the CPU default (eager) and
  # exercises the same flag; tests/test_field_capture.py checks compiled = eager on the CPU.
  CAPTURES=(off auto graphs)
fi
PARTS=(env nvdiffrast_build cuda_tests raster_compare render_off render_compile train_bench render_graphs)

run_part env 60 "$PY" scripts/gpu_check.py env --mode "$MODE"
CUDA=$("$PY" -c 'import json,sys; print(int(bool(json.load(open(sys.argv[1])).get("cuda"))))' "$W/env.out" 2>/dev/null || echo 0)
if [ "$MODE" = gpu ] && [ "$CUDA" != 1 ]; then
  for p in "${PARTS[@]:1}"; do echo "no CUDA device (see env)" > "$W/$p.skip"; done
fi
if [ "$CUDA" = 1 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # build nvdiffrast for this GPU only
  TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>/dev/null)
  export TORCH_CUDA_ARCH_LIST
fi

if [ "$NVDR" = 0 ]; then echo "${NVDR_HOW#nvdiffrast: }" > "$W/nvdiffrast_build.skip"; fi
run_part nvdiffrast_build 240 "$PY" scripts/gpu_check.py nvdiffrast-build
if [ "$NVDR" = 1 ] && [ -f "$W/nvdiffrast_build.rc" ] && [ "$(cat "$W/nvdiffrast_build.rc")" != 0 ]; then
  NVDR=0
  NVDR_HOW="nvdiffrast: its build failed (see nvdiffrast_build)"
  if [[ ":$PYTHONPATH:" == *":$SITE:"* ]]; then
    # installed by this script: hidden again, so the rasteriser's auto backend takes torch on CUDA
    PYTHONPATH=${PYTHONPATH//:$SITE/}
    export PYTHONPATH
  fi
fi

GPU_TESTS=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
K=()
if [ "$NVDR" = 0 ]; then
  K=(-k "not nvdiffrast")
  echo "nvdiffrast tests deselected (${NVDR_HOW#nvdiffrast: })" > "$W/cuda_tests.note"
fi
# shellcheck disable=SC2086
run_part cuda_tests 200 "$PY" -m pytest -q -rfE -m gpu -p no:cacheprovider "${K[@]}" \
  --junitxml="$W/cuda_tests.xml" $GPU_TESTS

if [ "$NVDR" = 0 ] && [ "$MODE" = gpu ]; then echo "${NVDR_HOW#nvdiffrast: }" > "$W/raster_compare.skip"; fi
run_part raster_compare 90 "${CLI[@]}" bench raster --compare --json --quiet --sizes "$C_SIZES" --device "$DEV"

render() {  # render PART CAPTURE MAX_SECONDS [EXTRA ARGS...]
  local part=$1 capture=$2 limit=$3
  shift 3
  run_part "$part" "$limit" "${CLI[@]}" bench render --json --quiet --device "$DEV" --sizes "$R_SIZES" \
    --widths "$R_WIDTHS" --repeats "$R_REPEATS" --reference-repeats "$R_REF" --capture "$capture" "$@"
}
render render_off "${CAPTURES[0]}" 120 "${R_BATCH[@]}"
render render_compile "${CAPTURES[1]}" 150
run_part train_bench 150 "${CLI[@]}" bench train --json --quiet "${TRAIN[@]}"
render render_graphs "${CAPTURES[2]}" 150

# ---- report -------------------------------------------------------------------------------------------
"$PY" scripts/gpu_check.py report --work "$W" --out "$OUT_DIR" --mode "$MODE" \
  --parts "$(IFS=,; echo "${PARTS[*]}")" --seconds $(( $(date +%s) - START )) --budget "$BUDGET" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -gt 1 ]; then
  # the report itself broke: say so where it would have been
  echo "gpu_check: the report failed (exit $rc); see $LOG" | tee -a "$LOG" "$OUT_DIR/summary.md"
  exit 1
fi
exit "$rc"
