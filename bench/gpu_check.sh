#!/usr/bin/env bash
# The GPU path in one run of at most 5 minutes, JSON on stdout (bench/gpu_check.py says what is measured).
#
#   bench/gpu_check.sh                 # on a CUDA machine
#   VITGUARD_GPU_CHECK_TIMEOUT_S=120 bench/gpu_check.sh --sections model_only,decode
#
# Without an NVIDIA device it prints {"gpu": false, ...} and exits 0. Past the limit the measurements made
# so far are printed ("complete": false) and the exit status is 124. Progress goes to stderr.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${VITGUARD_PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
limit="${VITGUARD_GPU_CHECK_TIMEOUT_S:-300}"

no_gpu() {
  printf '{"gpu": false, "reason": "%s", "complete": true}\n' "$1"
  exit 0
}
if [ -z "${VITGUARD_GPU_CHECK_ALLOW_CPU:-}" ]; then
  command -v nvidia-smi >/dev/null 2>&1 || no_gpu "no NVIDIA driver (nvidia-smi not found)"
  timeout 20 nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi -L lists no device"
  extra=()
else
  extra=(--allow-cpu)
fi

out="$(mktemp -d)/gpu_check.json"
trap 'rm -rf "$(dirname "$out")"' EXIT
timeout --kill-after=10 "$limit" "$python" "$here/gpu_check.py" --out "$out" "${extra[@]}" "$@" >&2
rc=$?
if [ -s "$out" ]; then
  cat "$out"
else
  printf '{"gpu": null, "complete": false, "error": "gpu_check.py wrote no result (exit %d)"}\n' "$rc"
fi
exit "$rc"
