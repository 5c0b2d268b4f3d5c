"""Train with E3 / PREPO on a GPU cluster through verl 0.9.1: ``python -m e3.main_train [--config-name NAME] k=v ...``.

Configs live in ``e3/config/`` (shipped in the package): ``e3_trainer`` is verl's own ``ppo_trainer`` plus our
overlay (trainer ``e3``, the temperature-aware agent loop, the math reward, the ``e3:`` section); ``e3_r1_1.5b``,
``e3_r1_7b`` and the ablation rows ``e3_r1_1.5b_{grpo,ts,ts_an,dr}`` reproduce the paper's runs. Overrides are
hydra's (``e3.temperature.enable=false data.train_files=...``); ``--cfg job`` prints the composed config.

The steps mirror verl's ``main_ppo.main`` (device, ``validate_config``, ``run_ppo``) with our task runner, which
registers the ``e3`` trainer inside its Ray actor; a config with another of verl's v1 trainers
(``trainer.v1.trainer_mode=sync``: stock verl, no ``e3:`` section needed) runs with verl's own ``TaskRunnerV1``.
A config with ``trainer.device=cpu`` runs verl on the CPU through the ``e3.engines.verl.cpu`` plugin, activated
here before verl starts: ``verl_cpu_tiny`` (E3; its ``cpu_tiny`` section is filled with the locally built model
and data, and a summary is printed at the end) or ``verl_cpu_grpo`` (verl's own GRPO on the user's model and files).

``scripts/train.sh`` calls ``python -m e3.main_train --config NAME_OR_FILE [--run-dir DIR] [--resume] k=v ...``:
``hydra_argv`` turns these flags into hydra's arguments and verl's keys (a verl overlay file is composed from its
folder with verl's and our configs on the search path; ``engine_of`` tells such a file from a local-engine one).

GPUs are counted where verl runs, on its Ray cluster. A driver without a GPU that joins a cluster
(``+ray_kwargs.ray_init.address=HEAD:PORT``, or ``RAY_ADDRESS`` as ``ray job submit`` sets it) starts: once verl's
``run_ppo`` has connected Ray (with its own ``ray.init`` arguments), the cluster's GPUs are counted before the task
runner is created, and a cluster without any stops the run. Without an address (Ray would start a local cluster on
this machine) a CUDA config on a machine without a GPU stops at once, before Ray starts, with a message pointing at
the local engine and at ``verl_cpu_tiny``.

verl loads models with ``flash_attention_2`` unless the model's ``override_config.attn_implementation`` says
otherwise; when ``flash_attn`` does not import on the driver, the preflight switches that default to ``sdpa`` and
prints so (``attention_fallback``), instead of the run dying minutes later in its actor workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra

CONFIG_DIR = str(Path(__file__).resolve().parent / "config")
NO_GPU_MESSAGE = ("verl needs NVIDIA GPUs (trainer.device=cuda) and none is visible here. On a machine without a GPU "
                  "run the local engine (bash scripts/train.sh) or verl on the CPU (bash scripts/train.sh "
                  "--config verl_cpu_tiny), or join a Ray cluster with GPUs (+ray_kwargs.ray_init.address=HEAD:PORT "
                  "or RAY_ADDRESS)")
NO_CLUSTER_GPU_MESSAGE = ("verl needs NVIDIA GPUs (trainer.device=cuda) and the Ray cluster at {address} has none "
                          "(ray.cluster_resources() lists no GPU): start its nodes on GPU machines (ray start "
                          "--num-gpus=N), or run verl on the CPU (bash scripts/train.sh --config verl_cpu_tiny)")


class ConfigError(ValueError):
    """A launch that cannot run as given; ``python -m e3.main_train`` prints it as one line and exits 2."""


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
    ``e3`` trainer), the device (no GPU here and no Ray cluster to join; a cluster's GPUs are counted once Ray
    connects, see ``check_cluster_gpus``), the attention fallback, verl's own ``validate_config``."""
    import ray
    import torch

    from e3.engines.verl.trainer import TRAINER_NAME, check_supported, e3_config_from
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    check_required(config)
    mode = check_trainer_mode(config)
    if mode == TRAINER_NAME:
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
    """``trainer.v1.trainer_mode``: ``e3`` (the E3 trainer) or another trainer of verl's v1 registry (stock verl,
    e.g. ``sync``); verl's legacy trainer (``trainer.use_v1=false``) is not run here."""
    from e3.engines.verl.trainer import TRAINER_NAME
    from verl.trainer.ppo.v1 import trainer_base

    if not config.trainer.use_v1:
        raise ConfigError("trainer.use_v1=false: e3.main_train runs verl's v1 trainers (trainer.use_v1=true); verl's "
                          "legacy trainer runs with python -m verl.trainer.main_ppo")
    mode = str(config.trainer.v1.trainer_mode)
    known = sorted(set(trainer_base.TRAINER_REGISTRY) | {TRAINER_NAME})
    if mode not in known:
        raise ConfigError(f"trainer.v1.trainer_mode={mode}: not a verl v1 trainer (known: {', '.join(known)})")
    return mode


FLASH_ATTENTION = "flash_attention_2"  # verl 0.9.1's default: HFModelConfig reads override_config.attn_implementation
FALLBACK_ATTENTION = "sdpa"


def flash_attn_error() -> str | None:
    """Why ``import flash_attn`` fails in this process (None: it imports)."""
    try:
        import flash_attn  # noqa: F401
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
    ``E3TaskRunner`` as a 1-CPU Ray actor for the ``e3`` trainer, verl's own ``TaskRunnerV1`` for verl's trainers."""
    import ray
    from omegaconf import OmegaConf

    from e3.engines.verl.runner import E3TaskRunner
    from e3.engines.verl.trainer import TRAINER_NAME
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    run_dir = prepare_cpu(config)
    preflight(config)
    runner = ray.remote(num_cpus=1)(E3TaskRunner) if config.trainer.v1.trainer_mode == TRAINER_NAME else TaskRunnerV1
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


VERL_TOP_KEYS = {"actor_rollout_ref", "critic", "algorithm", "ray_kwargs", "transfer_queue", "global_profiler",
                 "reward", "reward_model", "custom_reward_function", "cpu_tiny"}  # none of them is a local-engine key
SEARCHPATH = ("pkg://verl.trainer.config", f"file://{CONFIG_DIR}")  # verl's ppo_trainer and its groups, then ours


def _verl_config_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("verl")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "trainer" / "config"


def shipped_verl_configs() -> set[str]:
    """The verl configs shipped here (``e3/config/NAME.yaml``)."""
    return {p.stem for p in Path(CONFIG_DIR).glob("*.yaml")}


def _default_names(defaults) -> list[str]:
    """A hydra defaults list as config paths: ``ppo_trainer``, ``recipe/overlay``, ``actor/dp_actor``."""
    names = []
    for entry in defaults or []:
        if isinstance(entry, dict):
            for group, option in entry.items():
                group = str(group).removeprefix("override ").removeprefix("optional ").split("@")[0].strip("/ ")
                names.append(f"{group}/{option}" if option is not None else group)
        elif isinstance(entry, str) and entry != "_self_":
            names.append(entry.removeprefix("override ").removeprefix("optional ").split("@")[0].strip("/ "))
    return names


def _load_yaml(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return data if isinstance(data, dict) else {}


def engine_of(path: str) -> str:
    """``"verl"`` or ``"local"`` for a YAML config given by path (``scripts/train.sh --config FILE``).

    verl: its defaults list names one of verl's configs or config groups (``ppo_trainer``, ``actor/...``) or one of
    ours (``recipe/overlay``, ``e3_r1_1.5b``, ``verl_cpu_*``), or it has a top-level key only verl configs have
    (``actor_rollout_ref``, ``algorithm``, ``ray_kwargs``, ...) or ``trainer.v1`` / ``trainer.use_v1``. Anything else
    is a local-engine overlay (``defaults: [default, _self_]``, or no defaults list).
    """
    data = _load_yaml(path)
    verl_dir = _verl_config_dir()
    tops = shipped_verl_configs() | ({p.stem for p in verl_dir.glob("*.yaml")} if verl_dir else set())
    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "local"}
    groups |= {p.name for p in verl_dir.iterdir() if p.is_dir() and not p.name.startswith("_")} if verl_dir else set()
    for name in _default_names(data.get("defaults")):
        if name in tops or name.split("/")[0] in groups:
            return "verl"
    trainer = data.get("trainer") if isinstance(data.get("trainer"), dict) else {}
    if set(data) & VERL_TOP_KEYS or "v1" in trainer or "use_v1" in trainer:
        return "verl"
    return "local"


def _check_overlay(path: str) -> dict:
    """A verl overlay file that hydra can compose as the primary config, or a ``ConfigError`` saying what to write."""
    data = _load_yaml(path)
    names = _default_names(data.get("defaults"))
    if not names:
        raise ConfigError(f"{path}: a verl config needs a defaults list that starts from verl's ppo_trainer, e.g. "
                          f"defaults: [ppo_trainer, recipe/overlay, _self_] (E3) or [ppo_trainer, _self_] (stock verl)")
    shipped = [n for n in names if n in shipped_verl_configs()]
    if shipped:
        own = _load_yaml(str(Path(CONFIG_DIR) / f"{shipped[0]}.yaml"))
        listed = ", ".join(_default_names(own.get("defaults")) + ["_self_"])
        rest = sorted(set(own) - {"hydra", "defaults"})
        raise ConfigError(
            f"{path}: defaults lists {shipped[0]}, a top-level config that sets hydra.searchpath, which hydra accepts "
            f"from the primary config only; list what {shipped[0]}.yaml lists instead: defaults: [{listed}]"
            + (f" (and copy its own sections {rest} from e3/config/{shipped[0]}.yaml)" if rest else ""))
    return data


def _searchpath_override(own) -> str:
    entries = [str(e) for e in (own or [])]
    entries += [e for e in SEARCHPATH if e not in entries]
    return "hydra.searchpath=[" + ",".join(_quote(e) for e in entries) + "]"


def _quote(value: str) -> str:
    """``value`` as a hydra override value (quoted unless plainly safe)."""
    import re

    if re.fullmatch(r"[A-Za-z0-9_./:+-]+", value) and not value.startswith(("+", "-")):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_config_file(source: str) -> bool:
    return source.endswith((".yaml", ".yml")) and os.path.isfile(source)


def compose(config_name: str = "e3_trainer", overrides=()):
    """The config ``python -m e3.main_train --config NAME_OR_FILE k=v ...`` runs (hydra's compose API). A YAML file is
    composed from its own folder with verl's and our configs on hydra's search path."""
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = list(overrides)
    if _is_config_file(config_name):
        data = _check_overlay(config_name)
        path = Path(config_name).resolve()
        if not any(o.startswith("hydra.searchpath=") for o in overrides):
            overrides.append(_searchpath_override((data.get("hydra") or {}).get("searchpath")))
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            return hydra_compose(config_name=path.stem, overrides=overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def has_checkpoint(folder: str) -> bool:
    """Whether ``folder`` (a ``trainer.default_local_dir``) holds a verl checkpoint."""
    return os.path.isfile(os.path.join(folder, "latest_checkpointed_iteration.txt")) or \
        any(p.is_dir() for p in Path(folder).glob("global_step_*"))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_dir_overrides(source: str, run_dir: str, resume: bool, overrides: list[str]) -> list[str]:
    """``--run-dir DIR [--resume]`` as verl's keys, as the local engine means them: DIR is the run's folder.

    A config with a ``cpu_tiny`` section (``verl_cpu_tiny``) takes DIR as ``cpu_tiny.run_dir`` (its checkpoints,
    metrics.jsonl, requests.jsonl); any other verl config keeps its checkpoints in ``trainer.default_local_dir=
    DIR/checkpoints``. ``--resume`` is ``trainer.resume_mode=auto`` (continue from the latest checkpoint there);
    without it ``trainer.resume_mode=disable``, and a folder that already holds checkpoints is refused (a run is
    never overwritten). A key the user overrides as well keeps the user's value.
    """
    from omegaconf import OmegaConf, open_dict

    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    cfg = compose(source, overrides)
    mapped = {"cpu_tiny.run_dir": run_dir} if cfg.get("cpu_tiny") is not None else \
        {"trainer.default_local_dir": os.path.join(run_dir, "checkpoints")}
    mapped["trainer.resume_mode"] = "auto" if resume else "disable"
    given = {_override_key(o) for o in overrides if "=" in o}
    mapped = {k: v for k, v in mapped.items() if k not in given}
    with open_dict(cfg):
        for key, value in mapped.items():
            OmegaConf.update(cfg, key, value)
    checkpoints = str(OmegaConf.select(cfg, "trainer.default_local_dir"))
    if cfg.trainer.resume_mode == "disable" and has_checkpoint(checkpoints):
        raise ConfigError(f"--run-dir {run_dir}: {checkpoints} already holds verl checkpoints; pass --resume to "
                          f"continue that run, or choose another --run-dir")
    if resume and not has_checkpoint(checkpoints):
        print(f"[e3] --resume: no verl checkpoint in {checkpoints} yet, the run starts at step 0", flush=True)
    return [f"{k}={_quote(str(v))}" for k, v in mapped.items()]


def hydra_argv(argv: list[str]) -> list[str]:
    """``scripts/train.sh``'s flags as hydra's arguments: ``--config NAME`` (``e3/config/NAME.yaml``) or ``--config
    FILE`` (a verl overlay: ``--config-path``/``--config-name`` of the file, verl's and our configs on the search
    path), ``--run-dir DIR`` and ``--resume`` (``run_dir_overrides``); every other argument is passed on as is."""
    source, run_dir, resume, rest = None, None, False, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config", "--run-dir"):
            if not args:
                raise ConfigError(f"{arg} needs a value")
            value = args.pop(0)
        elif arg.startswith(("--config=", "--run-dir=")):
            arg, value = arg.split("=", 1)
        elif arg == "--resume":
            resume = True
            continue
        else:
            rest.append(arg)
            continue
        if arg == "--config":
            source = value
        else:
            run_dir = value
    out = []
    if source is not None:
        if _is_config_file(source):
            data = _check_overlay(source)
            path = Path(source).resolve()
            out += ["--config-path", str(path.parent), "--config-name", path.stem]
            if not any(a.startswith("hydra.searchpath=") for a in rest):
                out.append(_searchpath_override((data.get("hydra") or {}).get("searchpath")))
        elif (Path(CONFIG_DIR) / f"{source}.yaml").is_file():
            out += ["--config-name", source]
        else:
            raise ConfigError(f"--config {source}: neither a YAML file nor a verl config of e3/config "
                              f"({', '.join(sorted(shipped_verl_configs()))})")
    if resume and run_dir is None:
        raise ConfigError("--resume needs --run-dir (the run to continue)")
    if run_dir is not None:
        if source is None:  # --config-name NAME given to hydra directly
            for i, arg in enumerate(rest):
                if arg in ("--config-name", "-cn") and i + 1 < len(rest):
                    source = rest[i + 1]
                elif arg.startswith("--config-name="):
                    source = arg.split("=", 1)[1]
        overrides = [a for a in rest if "=" in a and not a.startswith("-")]
        if source is not None and _is_config_file(source):
            overrides = [o for o in out if o.startswith("hydra.searchpath=")] + overrides
        out += run_dir_overrides(source or "e3_trainer", run_dir, resume, overrides)
    return out + rest


@hydra.main(config_path=CONFIG_DIR, config_name="e3_trainer", version_base=None)
def main(config) -> None:
    try:
        run(config)
    except ConfigError as err:
        raise SystemExit(_refuse(err)) from None


def _refuse(err: Exception) -> int:
    import sys

    print(f"error: {err}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
    import sys

    try:
        sys.argv = [sys.argv[0], *hydra_argv(sys.argv[1:])]
    except ConfigError as err:
        raise SystemExit(_refuse(err)) from None
    main()
