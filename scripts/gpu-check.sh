#!/usr/bin/env bash
# The trainer's GPU checks, in one go, for a machine with an NVIDIA H100/H200 and a CUDA build of
# `distillery` (`cargo build --release -p distillery --features cuda`; docs/gpu.md
# says how to build it on a machine without a GPU and carry it to one).
#
#   scripts/gpu-check.sh [--device cuda|cuda:N|cpu] [--bin PATH] [--python PATH]
#                        [--configs gpt2-small,llama-0.5b] [-- EXTRA ARGS FOR THE BENCH]
#
# It runs, and prints a summary of:
#   1. ops    `distillery bench trainer-ops-check --device DEV`: every custom op of the trainer
#             (rms_norm, softmax, log_softmax, swiglu, rope, attention over packed sequences,
#             cross-entropy) and a small whole model, forward and gradients, on DEV against the
#             CPU in f32, in f32 and in bf16, each within its tolerance;
#   2. learn  `distillery bench trainer-learn-check --device DEV`: the trainer test's synthetic
#             packed dataset, tiny model, 60 AdamW steps (bf16 compute on CUDA); the loss must
#             fall below half of its first value;
#   3. bench  `distillery bench trainer --device DEV --configs gpt2-small,llama-0.5b
#             --same-weights`: training tokens/s and MFU beside the same model in PyTorch eager in
#             the same run, PyTorch starting from distillery's initial weights so that the
#             first-step losses must agree (PyTorch must be importable by the Python given; on
#             CUDA a missing baseline fails the step).
# It exits non-zero if any step fails.
#
# Without a GPU: `scripts/gpu-check.sh --device cpu` is a dry run of the same three steps on the
# CPU (the ops check then compares the CPU with itself in f32, which must be exact, and the CPU's
# bf16 with its f32; the bench runs the tiny config on short rows, and a missing PyTorch is only a
# warning). This is the part that runs on the build machines; the CUDA part has to be run on a
# GPU machine.
#
# Environment: DISTILLERY_BIN (the binary), PYTHON (the baseline's Python),
# GPU_CHECK_TIMEOUT (seconds per step, default 900).
set -uo pipefail

device=cuda
bin=${DISTILLERY_BIN:-}
python=${PYTHON:-}
configs=
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --configs) configs=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#'; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
    for candidate in "$here/distillery" "${CARGO_TARGET_DIR:-$here/target}/release/distillery" \
        "$HOME/.cache/distillery-target/release/distillery" "$(command -v distillery 2>/dev/null)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "gpu-check: no distillery binary found; pass --bin PATH or set DISTILLERY_BIN" >&2
    exit 2
fi
if [ -z "$python" ]; then
    if [ -x "$HOME/.cache/distillery-venv/bin/python" ]; then
        python=$HOME/.cache/distillery-venv/bin/python
    else
        python=$(command -v python3 || command -v python || echo python3)
    fi
fi

cuda=false
case "$device" in cuda|cuda:*) cuda=true ;; cpu) ;; *) echo "gpu-check: --device is cuda, cuda:N or cpu" >&2; exit 2 ;; esac
if $cuda; then
    # The GPU machine's CUDA 13.0 libraries (cuBLAS, cuRAND, NVRTC) and the driver's libcuda.
    for lib in /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do
        if [ -d "$lib" ]; then export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
    done
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    : "${configs:=gpt2-small,llama-0.5b}"
    bench_args=(--configs "$configs" --same-weights)
else
    : "${configs:=tiny}"
    bench_args=(--configs "$configs" --same-weights --rows 1 --row-tokens 128 --steps 2 --warmup-steps 1)
fi
timeout_s=${GPU_CHECK_TIMEOUT:-900}
logs=$(mktemp -d)
echo "gpu-check: $bin on $device, baseline Python $python, logs in $logs"

names=()
results=()
failed=0
step() {
    local name=$1; shift
    echo
    echo "=== $name: $*"
    local started=$SECONDS
    timeout "$timeout_s" "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    local result
    if [ "$rc" -eq 0 ]; then result=ok; else result="FAIL (exit $rc)"; fi
    if [ "$rc" -eq 124 ]; then result="FAIL (timed out after ${timeout_s}s)"; fi
    if [ "$name" = bench ] && [ "$rc" -eq 0 ] && grep -q "BASELINE \(MISSING\|FAILED\)" "$logs/$name.log"; then
        if $cuda; then result="FAIL (no PyTorch baseline)"; else result="ok (warning: no PyTorch baseline)"; fi
    fi
    case "$result" in FAIL*) failed=$((failed + 1)) ;; esac
    names+=("$name")
    results+=("$result, $((SECONDS - started))s")
}

step ops "$bin" bench trainer-ops-check --device "$device"
step learn "$bin" bench trainer-learn-check --device "$device"
step bench "$bin" bench trainer --device "$device" --python "$python" "${bench_args[@]}" "${extra[@]}"

echo
echo "=== gpu-check summary ($device, $bin)"
for i in "${!names[@]}"; do
    printf '  %-6s %s\n' "${names[$i]}" "${results[$i]}"
done
if [ "$failed" -gt 0 ]; then
    echo "gpu-check: $failed of ${#names[@]} checks failed (logs in $logs)"
    exit 1
fi
echo "gpu-check: all ${#names[@]} checks passed"
