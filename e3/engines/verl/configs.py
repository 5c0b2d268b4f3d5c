"""Finding and composing the verl configs that ``python -m e3.main_train`` runs.

The shipped configs live in ``e3/config/`` (``CONFIG_DIR``): ``e3_trainer`` is verl's own ``ppo_trainer`` plus our
overlay, the paper's runs, the ablation rows, the CPU runs. A YAML file given by path (a verl overlay) is composed
from its own folder with verl's and our configs on hydra's search path (``SEARCHPATH``); ``engine_of`` tells such a
file from a local-engine one. ``--run-dir DIR [--resume]`` becomes verl's keys in ``run_dir_overrides``.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "config")


class ConfigError(ValueError):
    """A launch that cannot run as given; ``python -m e3.main_train`` prints it as one line and exits 2."""


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


def _overlay_searchpath(path: str, overrides) -> list[str]:
    """For a verl overlay file (checked first): the ``hydra.searchpath`` override with the file's own entries, then
    verl's and our configs; none when ``overrides`` set one."""
    data = _check_overlay(path)
    if any(o.startswith("hydra.searchpath=") for o in overrides):
        return []
    return [_searchpath_override((data.get("hydra") or {}).get("searchpath"))]


def config_args(source: str, overrides=()) -> list[str]:
    """``--config NAME_OR_FILE`` as hydra's arguments: ``--config-name NAME`` for ``e3/config/NAME.yaml``; for a verl
    overlay file its ``--config-path``/``--config-name`` and its search path (``_overlay_searchpath``)."""
    if _is_config_file(source):
        searchpath = _overlay_searchpath(source, overrides)
        path = Path(source).resolve()
        return ["--config-path", str(path.parent), "--config-name", path.stem] + searchpath
    if (Path(CONFIG_DIR) / f"{source}.yaml").is_file():
        return ["--config-name", source]
    raise ConfigError(f"--config {source}: neither a YAML file nor a verl config of e3/config "
                      f"({', '.join(sorted(shipped_verl_configs()))})")


def compose(config_name: str = "e3_trainer", overrides=()):
    """The config ``python -m e3.main_train --config NAME_OR_FILE k=v ...`` runs (hydra's compose API). A YAML file is
    composed from its own folder with verl's and our configs on hydra's search path."""
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = list(overrides)
    if _is_config_file(config_name):
        overrides += _overlay_searchpath(config_name, overrides)
        path = Path(config_name).resolve()
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
