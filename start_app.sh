#!/usr/bin/env bash
# Start the heygem server: list the GPUs, let torch decide the device, print the effective settings,
# then `exec` the server so that it (not bash) is the process that receives SIGTERM and drains.
#
#   bash start_app.sh [--host H] [--port P] [--root-path /prefix] [any app.py flag ...]
#
# Host, port and root path come from HEYGEM_HOST, HEYGEM_PORT and HEYGEM_ROOT_PATH; the flags
# override them. Every other argument is passed to app.py unchanged. Logs go to stdout/stderr
# only; HEYGEM_LOG_FILE makes the application's logging write a file as well.
set -euo pipefail

APP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
# nvidia-smi can hang on a wedged driver and importing torch can stall on a broken CUDA setup:
# neither may keep the server from starting.
NVIDIA_SMI_SECONDS=20
TORCH_CHECK_SECONDS=60
# CUDA major version -> oldest host driver branch that runs it (NVIDIA minor-version compatibility).
MIN_DRIVER_CUDA12=525
MIN_DRIVER_CUDA13=580

say() { echo "start_app: $*"; }
warn() { echo "start_app: WARNING: $*" >&2; }

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

parse_args() {
  # Host, port, root path and every other setting are read by Settings.load (flags win over the
  # HEYGEM_* environment), so the arguments pass through untouched; only --help is ours.
  local arg
  for arg in "$@"; do
    case "$arg" in
      -h | --help)
        usage
        exit 0
        ;;
    esac
  done
}

gpu_found=0
driver_version=""
torch_sees_gpu=unknown  # 1, 0, or unknown when torch could not be asked

# nvidia-smi is only a report: a container may lack it (no `utility` capability) or it may hang
# while torch drives the GPU fine, so the device is decided by what torch sees (choose_device).
detect_gpu() {
  local listing=""
  if command -v nvidia-smi >/dev/null 2>&1 \
    && listing=$(timeout "$NVIDIA_SMI_SECONDS" nvidia-smi \
      --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null) \
    && [ -n "$listing" ]; then
    gpu_found=1
    local line
    while IFS= read -r line; do
      [ -n "$line" ] && say "GPU found: $line (name, driver, memory)"
    done <<<"$listing"
    driver_version=$(head -n 1 <<<"$listing" | cut -d, -f2 | tr -d ' ')
  fi
}

check_torch() {
  local report cuda_ok torch_cuda torch_version
  if ! report=$(timeout "$TORCH_CHECK_SECONDS" "$PYTHON" -c \
    'import torch; print(int(torch.cuda.is_available()), torch.version.cuda or "none", torch.__version__)' \
    2>/dev/null); then
    warn "could not ask torch about CUDA within ${TORCH_CHECK_SECONDS}s (is torch installed?)"
    return 0
  fi
  read -r cuda_ok torch_cuda torch_version <<<"$report"
  torch_sees_gpu=$([ "$cuda_ok" = 1 ] && echo 1 || echo 0)
  say "torch $torch_version, built for CUDA $torch_cuda, sees a GPU: $([ "$cuda_ok" = 1 ] && echo yes || echo no)"
  if [ "$gpu_found" = 1 ] && [ "$cuda_ok" != 1 ]; then
    if [ "$torch_cuda" = none ]; then
      warn "nvidia-smi sees a GPU but torch $torch_version is a CPU-only build:" \
        "install the CUDA wheel (pip install torch --index-url https://download.pytorch.org/whl/cu126)"
    else
      warn "nvidia-smi sees a GPU but torch cannot use it: the driver ($driver_version) is probably" \
        "too old for the wheel's CUDA $torch_cuda (CUDA 12.x needs driver >= $MIN_DRIVER_CUDA12," \
        "13.x needs >= $MIN_DRIVER_CUDA13); upgrade the driver or install a wheel for an older CUDA"
    fi
  elif [ "$gpu_found" = 0 ] && [ "$cuda_ok" = 1 ]; then
    warn "torch sees a GPU but nvidia-smi does not (missing or not answering): using the GPU;" \
      "in Docker set NVIDIA_DRIVER_CAPABILITIES=compute,utility,video so the toolkit mounts nvidia-smi"
  fi
}

choose_device() {
  # A device set by the operator always wins; otherwise torch's view decides. When torch could
  # not be asked, HEYGEM_DEVICE stays unset and the app's own "auto" decides once torch loads.
  if [ -z "${HEYGEM_DEVICE:-}" ]; then
    case "$torch_sees_gpu" in
      1) export HEYGEM_DEVICE=cuda ;;
      0)
        export HEYGEM_DEVICE=cpu
        [ "$gpu_found" = 0 ] && say "no GPU found, running on CPU (slow)"
        ;;
    esac
  fi
  say "device: HEYGEM_DEVICE=${HEYGEM_DEVICE:-auto}"
}

print_settings() {
  # Settings.load also validates: a bad value stops here with a one-line message, before the
  # server starts. Secrets come back masked from describe().
  "$PYTHON" -c '
import sys
from heygem.settings import Settings
try:
    settings = Settings.load(argv=sys.argv[1:])
except ValueError as exc:
    print(f"start_app: bad setting: {exc}", file=sys.stderr)
    sys.exit(2)
print("start_app: effective settings:")
for name, value in settings.describe().items():
    print(f"start_app:   {name}={value}")
print(f"start_app: serving on http://{settings.host}:{settings.port}{settings.root_path}/")
' "$@"
}

main() {
  parse_args "$@"
  cd "$APP_DIR"
  detect_gpu
  check_torch
  choose_device
  print_settings "$@"
  # The arguments are not echoed: they may carry a secret such as --api-token.
  say "starting the server: $PYTHON app.py (with $# argument(s))"
  exec "$PYTHON" app.py "$@"
}

main "$@"
