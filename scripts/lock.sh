#!/usr/bin/env bash
# Re-resolve the two install locks from pyproject.toml with uv (run after changing a dependency; commit both).
#   requirements/cpu.lock  Linux x86_64 / CPython 3.11, extras cpu,test,bench; torch left out (the `cpu` extra pins the
#                          CPU build, which PyPI does not carry: pip takes it from PIP_FIND_LINKS or the PyTorch index)
#   requirements/gpu.lock  every platform (universal markers), extras gpu,test,bench: verl 0.9.1's [vllm] and [fsdp] pins
# Extra arguments go to both `uv pip compile` calls (e.g. --upgrade-package transformers).
set -euo pipefail
E3_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$E3_ROOT"
# uv from PATH, else the one scripts/_venv.sh installed (the `test` extra pins it).
uv="$(command -v uv || echo "$E3_ROOT/.venv/bin/uv")"
[ -x "$uv" ] || { echo "error: uv not found: pip install uv, or run bash scripts/test.sh once" >&2; exit 2; }
mkdir -p requirements
find_links=()
[ -n "${PIP_FIND_LINKS:-}" ] && find_links=(--find-links "$PIP_FIND_LINKS")
"$uv" pip compile pyproject.toml --extra cpu --extra test --extra bench --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  ${find_links[@]+"${find_links[@]}"} --no-emit-package torch --no-emit-find-links --custom-compile-command "bash scripts/lock.sh" \
  -o requirements/cpu.lock "$@"
"$uv" pip compile pyproject.toml --extra gpu --extra test --extra bench --universal --python-version 3.11 \
  --custom-compile-command "bash scripts/lock.sh" -o requirements/gpu.lock "$@"
