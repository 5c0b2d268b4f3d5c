"""Configuration of the local engine: hydra-style YAML overlays + dotted overrides, checked before any work.

``load_config(path, overrides)`` reads ``path`` (default ``configs/local/default.yaml``), first merging the files
its ``defaults:`` list names (hydra's ``[default, _self_]`` form, resolved next to the file), then the dotted
overrides ``trainer.total_steps=50 e3.temperature.enable=false``. The schema is ``default.yaml`` plus
``E3Config``'s fields: a key outside it raises ``ConfigError`` naming it; ``validate`` checks types and ranges
and builds the typed ``E3Config`` (which names its own bad keys).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from e3.config import E3Config
from e3.engines.chain_task import ChainLevel
from e3.engines.tiny_task import Level

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs", "local")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")


class ConfigError(ValueError):
    """A config file, key or value the local engine cannot run with."""


def _read_yaml(path: str, chain: tuple = ()) -> DictConfig:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path in chain:
        raise ConfigError(f"config defaults loop: {' -> '.join(chain + (path,))}")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: cannot parse YAML ({err})") from None
    defaults = raw.pop("defaults", None) if isinstance(raw, DictConfig) else None
    if defaults is None:
        return raw
    merged = OmegaConf.create({})
    self_done = False
    for item in defaults:
        if item == "_self_":
            merged, self_done = _merge(merged, raw, path), True
            continue
        name = str(item)
        parent = os.path.join(os.path.dirname(path), name if name.endswith(".yaml") else f"{name}.yaml")
        merged = _merge(merged, _read_yaml(parent, chain + (path,)), parent)
    return merged if self_done else _merge(merged, raw, path)


def _merge(base: DictConfig, other, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as err:
        raise ConfigError(f"unknown config key {err.full_key} (in {where})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad config value at {getattr(err, 'full_key', '?')} (in {where}): {err.msg}") from None


def schema() -> DictConfig:
    """default.yaml with the full E3Config under ``e3``, in struct mode (unknown keys are errors)."""
    base = OmegaConf.create({"e3": E3Config().to_dict()})
    cfg = OmegaConf.merge(base, _read_yaml(DEFAULT_CONFIG))
    OmegaConf.set_struct(cfg, True)
    return cfg


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Schema <- config file (with its defaults chain) <- dotted overrides; then ``validate``."""
    cfg = schema()
    path = path or DEFAULT_CONFIG
    if os.path.abspath(path) != DEFAULT_CONFIG:
        cfg = _merge(cfg, _read_yaml(path), path)
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.total_steps=50)")
    if overrides:
        cfg = _merge(cfg, OmegaConf.from_dotlist(overrides), "command-line overrides")
    validate(cfg)
    return cfg


def from_any(config) -> DictConfig:
    """A DictConfig from a DictConfig, a dict (merged over the schema) or a YAML path; validated."""
    if isinstance(config, str):
        return load_config(config)
    cfg = schema()
    if config is not None:
        cfg = _merge(cfg, OmegaConf.create(config) if isinstance(config, dict) else config, "config")
    validate(cfg)
    return cfg


_INT_POS = ["task.train_size", "task.val_size", "task.prompt_width", "task.max_new_tokens", "model.hidden_size",
            "model.num_layers", "model.num_heads", "model.intermediate_size", "warm_start.batch_size",
            "rollout.batch_size", "rollout.n", "trainer.total_steps", "trainer.ppo_epochs", "trainer.mini_batches",
            "trainer.save_every", "trainer.keep_checkpoints", "trainer.val_every", "val.n_samples", "threads"]
_INT_NONNEG = ["seed", "task.seed", "task.report_samples", "warm_start.steps", "warm_start.warmup_steps"]
_FLOAT_POS = ["warm_start.lr", "trainer.lr", "trainer.clip_ratio", "trainer.grad_clip", "val.temperature"]
_FLOAT_NONNEG = ["warm_start.min_lr", "warm_start.weight_decay", "warm_start.prompt_loss", "trainer.weight_decay"]


def validate(cfg: DictConfig) -> E3Config:
    """Types and ranges of every engine key; returns the typed E3Config."""
    def get(key):
        return OmegaConf.select(cfg, key)

    def fail(key, msg):
        raise ConfigError(f"config key {key} {msg}, got {get(key)!r}")

    for key in _INT_POS + _INT_NONNEG:
        v = get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            fail(key, "must be an integer")
        if v < (1 if key in _INT_POS else 0):
            fail(key, "must be >= 1" if key in _INT_POS else "must be >= 0")
    for key in _FLOAT_POS + _FLOAT_NONNEG:
        v = get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            fail(key, "must be a number")
        if v < 0 or (key in _FLOAT_POS and v == 0):
            fail(key, "must be > 0" if key in _FLOAT_POS else "must be >= 0")
    for key in ("task.val_fraction", "task.demo_fraction", "warm_start.demo_error_rate"):
        v = get(key)
        if not isinstance(v, (int, float)) or not 0 <= v < 1:
            fail(key, "must be a number in [0, 1)")
    if get("task.val_fraction") + get("task.demo_fraction") >= 1:
        fail("task.demo_fraction", "plus task.val_fraction must be < 1 (the RL pool would be empty)")
    if get("device") not in ("auto", "cpu", "cuda"):
        fail("device", "must be auto, cpu or cuda")
    levels = get("task.levels")
    if not levels:
        fail("task.levels", "must list at least one level")
    ks = get("val.pass_k")
    if ks is None or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        fail("val.pass_k", "must be a list of integers >= 1")
    if get("task.kind") not in ("arithmetic", "chain"):
        fail("task.kind", "must be arithmetic or chain")
    for spec in levels:
        try:
            (ChainLevel if get("task.kind") == "chain" else Level).parse(str(spec))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if get("task.kind") == "chain":
        if get("warm_start.demo_error_rate") != 0:
            fail("warm_start.demo_error_rate", "must be 0 with task.kind=chain (its demonstrator slips per step: "
                 "task.chain.step_error_rate)")
        for key in ("task.chain.problems_per_level", "task.chain.demo_variants"):
            if not isinstance(get(key), int) or isinstance(get(key), bool) or get(key) < 1:
                fail(key, "must be an integer >= 1")
        if not isinstance(get("task.chain.step_error_rate"), (int, float)) or not 0 <= get("task.chain.step_error_rate") < 1:
            fail("task.chain.step_error_rate", "must be a number in [0, 1)")
        demo = get("task.chain.demo_levels")
        if demo is not None and (not len(demo) or any(str(d) not in [str(v) for v in levels] for d in demo)):
            fail("task.chain.demo_levels", "must be null or a non-empty list of specs from task.levels")
    if get("model.hidden_size") % get("model.num_heads"):
        fail("model.hidden_size", "must be divisible by model.num_heads")
    for key in ("data.train_file", "data.val_file", "warm_start.cache_dir"):
        if get(key) is not None and not isinstance(get(key), str):
            fail(key, "must be a path or null")
    for key in ("val.greedy", "plots"):
        if not isinstance(get(key), bool):
            fail(key, "must be true or false")
    if get("rollout.batch_size") * get("rollout.n") % get("trainer.mini_batches"):
        fail("trainer.mini_batches", "must divide rollout.batch_size * rollout.n")
    try:
        e3 = E3Config.from_dict(OmegaConf.to_container(cfg.e3, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    a, n = e3.allocation, get("rollout.n")
    if a.enable and not a.n_low <= n <= a.n_high:
        fail("rollout.n", f"must lie in [e3.allocation.n_low, e3.allocation.n_high] = [{a.n_low}, {a.n_high}]")
    if n < 2:
        fail("rollout.n", "must be >= 2 (a group of one has no GRPO baseline)")
    return e3


def diff_keys(a: DictConfig, b: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    da, db = OmegaConf.to_container(a, resolve=True), OmegaConf.to_container(b, resolve=True)
    out: list[str] = []

    def walk(x, y, p):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{p}{k}.")
        elif x != y:
            out.append(p.rstrip("."))
    walk(da, db, prefix)
    return out
