"""From a composed config to verl's ``run_ppo``: the driver's preflight, then the task runner.

``run`` prepares a ``trainer.device=cpu`` config (the ``e3.engines.verl.cpu`` plugin activated before verl starts;
``verl_cpu_tiny``'s assets built, its summary printed at the end), checks on the driver what must fail in seconds
(``preflight``: required keys, the trainer, the ``e3:`` section, the device, verl's ``validate_config``) and starts
verl's ``run_ppo`` with ``E3TaskRunner`` for the E3 trainers (``e3``, ``e3_colocate_async``) or verl's own
``TaskRunnerV1`` for its v1 trainers.

GPUs are counted where verl runs, on its Ray cluster: a driver without a GPU that names a cluster
(``+ray_kwargs.ray_init.address=HEAD:PORT``, or ``RAY_ADDRESS``) starts, and once ``run_ppo`` has connected Ray the
cluster's GPUs are counted before the task runner is created (``ClusterCheckedRunner``); without an address a CUDA
config on a machine without a GPU stops before Ray starts.

verl loads models with ``flash_attention_2`` unless ``override_config.attn_implementation`` says otherwise; when
``flash_attn`` does not import on the driver, ``attention_fallback`` switches that default to ``sdpa`` and says so.
"""

from __future__ import annotations

import os

from e3.engines.verl.configs import ConfigError

NO_GPU_MESSAGE = ("verl needs NVIDIA GPUs (trainer.device=cuda) and none is visible here. On a machine without a GPU "
                  "run the local engine (bash scripts/train.sh) or verl on the CPU (bash scripts/train.sh "
                  "--config verl_cpu_tiny), or join a Ray cluster with GPUs (+ray_kwargs.ray_init.address=HEAD:PORT "
                  "or RAY_ADDRESS)")
NO_CLUSTER_GPU_MESSAGE = ("verl needs NVIDIA GPUs (trainer.device=cuda) and the Ray cluster at {address} has none "
                          "(ray.cluster_resources() lists no GPU): start its nodes on GPU machines (ray start "
                          "--num-gpus=N), or run verl on the CPU (bash scripts/train.sh --config verl_cpu_tiny)")


def ray_address(config) -> str | None:
    """The Ray cluster verl's ``ray.init`` will join: ``ray_kwargs.ray_init.address``, else ``RAY_ADDRESS``
    (Ray's own fallback, set by ``ray job submit``); None: Ray starts a local cluster on this machine."""
    from omegaconf import OmegaConf

    address = OmegaConf.select(config, "ray_kwargs.ray_init.address", default=None)
    return str(address) if address else (os.environ.get("RAY_ADDRESS") or None)


def check_cluster_gpus(config) -> float | None:
    """With Ray connected: the cluster's GPU count for a ``trainer.device=cuda`` run (None for another device);
    a cluster without GPUs stops the run with ``NO_CLUSTER_GPU_MESSAGE``."""
    import ray

    if config.trainer.device != "cuda":
        return None
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    address = ray_address(config) or "started on this machine"
    if gpus <= 0:
        raise SystemExit(NO_CLUSTER_GPU_MESSAGE.format(address=address))
    print(f"[e3] Ray cluster ({address}): {gpus:g} GPU(s)", flush=True)
    return gpus


class ClusterCheckedRunner:
    """The task-runner actor class handed to verl's ``run_ppo``: verl connects Ray first (``ray.init`` with the
    config's ``ray_kwargs``, or the Ray already running), then creates the runner with ``.remote()`` (or
    ``.options(...).remote()``); the cluster's GPUs are counted at that moment, before anything is scheduled."""

    def __init__(self, actor_class, config):
        self._actor_class, self._config = actor_class, config

    def options(self, **kwargs) -> "ClusterCheckedRunner":
        return ClusterCheckedRunner(self._actor_class.options(**kwargs), self._config)

    def remote(self, *args, **kwargs):
        check_cluster_gpus(self._config)
        return self._actor_class.remote(*args, **kwargs)


def preflight(config) -> None:
    """Checks that must fail on the driver, in seconds, before Ray starts: the trainer, the ``e3:`` section (for the
    E3 trainers), the device (no GPU here and no Ray cluster to join; a cluster's GPUs are counted once Ray
    connects, see ``check_cluster_gpus``), the attention fallback, verl's own ``validate_config``."""
    import ray
    import torch

    from e3.engines.verl.trainer import E3_TRAINERS, check_supported, e3_config_from
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    check_required(config)
    mode = check_trainer_mode(config)
    if mode in E3_TRAINERS:
        check_supported(config, e3_config_from(config))
    auto_set_device(config)
    if config.trainer.device == "cuda" and not torch.cuda.is_available() and ray_address(config) is None \
            and not ray.is_initialized():
        raise SystemExit(NO_GPU_MESSAGE)
    attention_fallback(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


REQUIRED = ("actor_rollout_ref.model.path", "data.train_files", "data.val_files")


def check_required(config) -> None:
    """The keys every run needs and a config may leave to the command line (``verl_cpu_grpo``): one error naming
    all that are unset."""
    from omegaconf import OmegaConf

    unset = [k for k in REQUIRED if OmegaConf.is_missing(config, k) or OmegaConf.select(config, k) in (None, "", [])]
    if unset:
        raise ConfigError(f"{', '.join(unset)} not set: give {'them' if len(unset) > 1 else 'it'} on the command line "
                          f"({' '.join(f'{k}=...' for k in unset)}; the model a Hugging Face model directory, the "
                          f"files verl parquet)")


def check_trainer_mode(config) -> str:
    """``trainer.v1.trainer_mode``: an E3 trainer (``e3``, ``e3_colocate_async``) or another trainer of verl's v1
    registry (stock verl, e.g. ``sync``); verl's legacy trainer (``trainer.use_v1=false``) is not run here, nor
    separate_async or verl's own colocate_async with an ``e3:`` section (``trainer.check_e3_trainer_mode``)."""
    from e3.engines.verl.trainer import E3_TRAINERS, check_e3_trainer_mode
    from verl.trainer.ppo.v1 import trainer_base

    if not config.trainer.use_v1:
        raise ConfigError("trainer.use_v1=false: e3.main_train runs verl's v1 trainers (trainer.use_v1=true); verl's "
                          "legacy trainer runs with python -m verl.trainer.main_ppo")
    mode = str(config.trainer.v1.trainer_mode)
    try:
        check_e3_trainer_mode(mode, has_e3_section=config.get("e3") is not None)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    known = sorted(set(trainer_base.TRAINER_REGISTRY) | set(E3_TRAINERS))
    if mode not in known:
        raise ConfigError(f"trainer.v1.trainer_mode={mode}: not a verl v1 trainer (known: {', '.join(known)})")
    return mode


FLASH_ATTENTION = "flash_attention_2"  # verl 0.9.1's default: HFModelConfig reads override_config.attn_implementation
FALLBACK_ATTENTION = "sdpa"


def flash_attn_error() -> str | None:
    """Why ``import flash_attn`` fails in this process (None: it imports)."""
    import importlib

    try:
        importlib.import_module("flash_attn")
    except Exception as err:  # not installed, or built against another torch/CUDA (undefined symbol, ...)
        return f"{type(err).__name__}: {err}"
    return None


def attention_fallback(config) -> list[str]:
    """When verl would load a model with its default ``flash_attention_2`` (no ``attn_implementation`` in the
    model's ``override_config``) and ``flash_attn`` does not import on the driver, set ``sdpa`` (PyTorch's attention)
    and say so, instead of a run dying minutes later in its actor workers. A value the config sets is kept (a
    ``flash_attention_2`` set explicitly with a warning: the cluster's nodes may have flash-attn where the driver has
    not). Returns the keys it set."""
    import sys

    from omegaconf import OmegaConf, open_dict
    from verl.trainer.ppo.utils import need_critic

    sections = ["actor_rollout_ref.model"] + (["critic.model"] if need_critic(config) else [])
    error, changed = None, []
    for section in sections:
        model = OmegaConf.select(config, section, default=None)
        if model is None:
            continue
        chosen = OmegaConf.select(model, "override_config.attn_implementation", default=None)
        if chosen is not None and chosen != FLASH_ATTENTION:
            continue
        error = error or flash_attn_error()
        if error is None:
            return []
        key = f"{section}.override_config.attn_implementation"
        if chosen == FLASH_ATTENTION:
            print(f"[e3] warning: {key}={FLASH_ATTENTION} is set but flash_attn does not import here ({error}); "
                  f"verl's workers need it on every node", file=sys.stderr, flush=True)
            continue
        with open_dict(model):
            if model.get("override_config") is None:
                model.override_config = {}
            model.override_config.attn_implementation = FALLBACK_ATTENTION
        changed.append(key)
    if changed:
        print(f"[e3] flash_attn does not import here ({error}), and verl's default attention is {FLASH_ATTENTION}: "
              f"this run uses {FALLBACK_ATTENTION} (PyTorch's attention; slower, more memory on long sequences) — "
              f"{', '.join(f'{k}={FALLBACK_ATTENTION}' for k in changed)}. For flash-attn: pip install "
              f"--no-build-isolation flash-attn==2.8.3 (README, GPU cluster); to keep {FLASH_ATTENTION} anyway (the "
              f"cluster's nodes have it): +{changed[0]}={FLASH_ATTENTION}", file=sys.stderr, flush=True)
    return changed


def run(config) -> None:
    """Preflight, then verl's ``run_ppo`` with the task runner (its GPUs counted once verl has connected Ray):
    ``E3TaskRunner`` as a 1-CPU Ray actor for the E3 trainers, verl's own ``TaskRunnerV1`` for verl's trainers."""
    import ray
    from omegaconf import OmegaConf

    from e3.engines.verl.runner import E3TaskRunner
    from e3.engines.verl.trainer import E3_TRAINERS
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    run_dir = prepare_cpu(config)
    preflight(config)
    runner = ray.remote(num_cpus=1)(E3TaskRunner) if config.trainer.v1.trainer_mode in E3_TRAINERS else TaskRunnerV1
    env_vars = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default=None)
    metrics = (env_vars or {}).get("VERL_FILE_LOGGER_PATH") or os.environ.get("VERL_FILE_LOGGER_PATH")
    if metrics and "file" in list(config.trainer.get("logger") or []):  # verl's file logger opens it, folder or not
        os.makedirs(os.path.dirname(os.path.abspath(os.path.expanduser(str(metrics)))), exist_ok=True)
    if env_vars is not None and ray.is_initialized():  # Ray started elsewhere (a notebook, a test): its env is not
        runner = runner.options(runtime_env={"env_vars": OmegaConf.to_container(env_vars)})  # the config's
    run_ppo(config, task_runner_class=ClusterCheckedRunner(runner, config))
    if run_dir is not None:
        from e3.engines.verl.cpu.tiny import summary

        print(summary(run_dir), flush=True)


def prepare_cpu(config) -> str | None:
    """For ``trainer.device=cpu``: build the ``cpu_tiny`` assets if the config has that section (returns its run
    folder), resolve the config, refuse what the CPU plugin cannot run, and activate the plugin in this process with
    the env vars it gives Ray (any verl config: ``verl_cpu_tiny`` with E3, ``verl_cpu_grpo`` with verl's own GRPO)."""
    from omegaconf import OmegaConf

    if config.trainer.device != "cpu":
        return None
    run_dir = None
    if config.get("cpu_tiny") is not None:
        from e3.engines.verl.cpu.tiny import prepare_run

        run_dir = prepare_run(config)
    OmegaConf.resolve(config)
    from e3.engines.verl.cpu import activate, check_supported
    from e3.engines.verl.cpu.sampler import check_config

    try:
        check_supported(config)
        check_config(config)
    except ValueError as err:
        raise ConfigError(str(err)) from err

    env_vars = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env.env_vars", default=None)
    activate(OmegaConf.to_container(env_vars) if env_vars is not None else None)
    return run_dir
