#!/usr/bin/env bash
# Train. No arguments: the embedded default (tiny GRPO+E3 run on the local engine, ~10 min on 2 CPU cores).
#   bash scripts/train.sh [--config NAME] [--run-dir DIR] [--resume] [key=value ...]
# NAME is a local-engine config shipped in the package (e3/config/local/NAME.yaml: default, grpo, ts, ts_an, dr, e3,
# prepo, e3_prepo), a verl config shipped in the package (e3/config/NAME.yaml, e.g. e3_r1_1.5b, verl_cpu_tiny,
# verl_cpu_grpo), or the path of a YAML file: a local-engine overlay (configs/local/grpo.yaml, your own) or a verl
# overlay (its defaults list starts from verl's ppo_trainer; e3.engines.verl.configs.engine_of tells them apart).
# verl configs need GPUs, here or on the Ray cluster they join (+ray_kwargs.ray_init.address=HEAD:PORT, or
# RAY_ADDRESS as `ray job submit` sets it), except verl_cpu_* (verl on the CPU).
# --run-dir DIR / --resume: the run's folder, continued from its last checkpoint; for verl configs
# e3.main_train maps them to verl's keys (trainer.default_local_dir=DIR/checkpoints or cpu_tiny.run_dir=DIR,
# trainer.resume_mode=auto|disable).
# key=value arguments are hydra-style overrides for either engine (e.g. e3.temperature.enable=false).
set -euo pipefail
caller_pwd="$PWD"
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

if [[ "$config" == *.y*ml ]] && [[ "$config" != /* ]] && [ -f "$caller_pwd/$config" ]; then
  config="$caller_pwd/$config"   # a path relative to where the command was typed
fi
if [ -f "e3/config/local/$config.yaml" ]; then
  engine=local
elif [ -f "e3/config/$config.yaml" ]; then
  engine=verl
  if [ "$E3_GPU" != "1" ] && [[ "$config" != verl_cpu* ]] && [ -z "$ray_cluster" ]; then
    echo "error: '$config' is a verl config and needs NVIDIA GPUs (none found: nvidia-smi -L failed)." >&2
    echo "       On this machine run a local-engine config (ls e3/config/local/) or verl on the CPU: --config verl_cpu_tiny;" >&2
    echo "       or join a Ray cluster with GPUs: +ray_kwargs.ray_init.address=HEAD:PORT (or RAY_ADDRESS)" >&2
    exit 2
  fi
elif [ -f "$config" ] && [[ "$config" == *.y*ml ]]; then
  engine="$(python -c 'import sys; from e3.engines.verl.configs import engine_of; print(engine_of(sys.argv[1]))' "$config")"
else
  echo "error: unknown config '$config': not e3/config/local/$config.yaml nor e3/config/$config.yaml nor a YAML file" >&2
  echo "       local: $(ls e3/config/local 2>/dev/null | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  echo "       verl:  $(ls e3/config 2>/dev/null | grep yaml | sed 's/\.yaml$//' | tr '\n' ' ')" >&2
  exit 2
fi
if [ "$engine" = local ]; then
  exec python -m e3.engines.local --config "$config" ${args[@]+"${args[@]}"}
fi
exec python -m e3.main_train --config "$config" ${args[@]+"${args[@]}"}   # --run-dir/--resume mapped there
