#!/usr/bin/env bash
# Train. No arguments: the embedded default (tiny GRPO+E3 run on the local engine, ~10 min on 2 CPU cores).
#   bash scripts/train.sh [--config NAME] [--run-dir DIR] [--resume] [key=value ...]
# NAME is a local-engine config shipped in the package (e3/config/local/NAME.yaml: default, grpo, ts, ts_an, dr, e3,
# prepo, e3_prepo; or the path of a YAML file, e.g. configs/local/grpo.yaml or your own overlay) or a verl config
# shipped in the package (e3/config/NAME.yaml, e.g. e3_r1_1.5b); verl configs need GPUs, here or on the Ray cluster
# they join (+ray_kwargs.ray_init.address=HEAD:PORT, or RAY_ADDRESS as `ray job submit` sets it), except verl_cpu_*
# (verl on the CPU: e.g. verl_cpu_tiny, E3 on a tiny model in a few minutes).
# key=value arguments are hydra-style overrides for either engine (e.g. e3.temperature.enable=false).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$E3_ROOT"
export TOKENIZERS_PARALLELISM=false

config=default
args=()
ray_cluster="${RAY_ADDRESS:-}"   # a Ray cluster to join: its GPUs count, not this machine's
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --config=*) config="${1#--config=}"; shift ;;
    ray_kwargs.ray_init.address=?*|+ray_kwargs.ray_init.address=?*|++ray_kwargs.ray_init.address=?*)
      ray_cluster="${1#*=}"; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done

if [ -f "e3/config/local/$config.yaml" ] || { [ -f "$config" ] && [[ "$config" == *.y*ml ]]; }; then
  exec python -m e3.engines.local --config "$config" ${args[@]+"${args[@]}"}
elif [ -f "e3/config/$config.yaml" ]; then
  if [ "$E3_GPU" != "1" ] && [[ "$config" != verl_cpu* ]] && [ -z "$ray_cluster" ]; then
    echo "error: '$config' is a verl config and needs NVIDIA GPUs (none found: nvidia-smi -L failed)." >&2
    echo "       On this machine run a local-engine config (ls e3/config/local/) or verl on the CPU: --config verl_cpu_tiny;" >&2
    echo "       or join a Ray cluster with GPUs: +ray_kwargs.ray_init.address=HEAD:PORT (or RAY_ADDRESS)" >&2
    exit 2
  fi
  exec python -m e3.main_train --config-name "$config" ${args[@]+"${args[@]}"}
else
  echo "error: unknown config '$config': not e3/config/local/$config.yaml nor e3/config/$config.yaml" >&2
  echo "       local: $(ls e3/config/local 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  echo "       verl:  $(ls e3/config 2>/dev/null | grep yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
