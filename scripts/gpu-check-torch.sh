#!/usr/bin/env bash
# The torch trainer engine's GPU checks, for a machine with an NVIDIA H100/H200 and a CUDA build
# of PyTorch in the Python given (the project's virtualenv by default):
#
#   scripts/gpu-check-torch.sh [--device cuda|cuda:N|cpu] [--python PATH] [-- EXTRA ARGS]
#
# It runs `python -m distillery_torch.gpu_check` (processors/trainer-torch), which checks and
# prints, one JSON line each:
#   1. isolation  a sequence's logits inside a packed row equal its logits alone with each GPU
#                 attention kernel the engine uses (varlen, flex, block-mask SDPA; bf16), and
#                 differ without the boundaries; the same for a NemotronH through its Mamba2
#                 kernels (mamba_ssm/causal_conv1d when installed, else the torch path: the line
#                 says which);
#   2. throughput tokens/s, peak GPU memory and MFU (against 989 TFLOP/s, H200 dense bf16) of the
#                 engine's training step on 60,000-token packed rows, FSDP2, activation
#                 checkpointing, for a ~1B Llama (Llama 3.2 1B's shape; goal: MFU >= 40%) and a
#                 small NemotronH.
# It exits non-zero if an isolation check fails or a step is not finite.
#
# Without a GPU: `scripts/gpu-check-torch.sh --device cpu` is a dry run of the same checks with
# tiny models and 512-token rows (isolation with SDPA only, f32; MFU against a CPU matmul timed in
# the run). That part runs on the build machines; the CUDA part has to be run on a GPU machine.
#
# Environment: PYTHON (default ~/.cache/distillery-venv/bin/python), GPU_CHECK_TIMEOUT (seconds,
# default 1800).
set -uo pipefail

device=cuda
python=${PYTHON:-}
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#'; exit 0 ;;
        *) echo "gpu-check-torch: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$python" ]; then
    if [ -x "$HOME/.cache/distillery-venv/bin/python" ]; then
        python=$HOME/.cache/distillery-venv/bin/python
    else
        python=$(command -v python3 || echo python3)
    fi
fi
# The CPU dry run takes one thread, as torchrun gives each worker one.
case "$device" in cuda|cuda:*) command -v nvidia-smi >/dev/null && nvidia-smi -L ;; cpu) export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} ;; *)
    echo "gpu-check-torch: --device is cuda, cuda:N or cpu" >&2; exit 2 ;; esac
log=$(mktemp)
echo "gpu-check-torch: $python on $device, log in $log"
PYTHONPATH="$here/processors/trainer-torch/src${PYTHONPATH:+:$PYTHONPATH}" \
    timeout "${GPU_CHECK_TIMEOUT:-1800}" "$python" -m distillery_torch.gpu_check --device "$device" "${extra[@]}" 2>"$log.stderr" | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    tail -n 30 "$log.stderr" >&2
    echo "gpu-check-torch: FAILED (exit $rc)"
    exit 1
fi
echo "gpu-check-torch: all checks passed"
