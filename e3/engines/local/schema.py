"""Configuration of the local engine: a typed schema, configs composed by Hydra, overrides, checked before any work.

``LocalConfig`` below is the schema, every field documented where it is declared, defaults = the embedded default
run; its ``e3`` section is ``e3.schema.E3Config``. The configs shipped in the package (``e3/config/local/``, found
next to this package after a non-editable install too) are composed by Hydra's compose API: ``default.yaml`` is
``defaults: [local_schema, _self_]`` (the schema registered in Hydra's ConfigStore), and each ablation overlay starts
with ``defaults: [default, _self_]``. A config given by path is composed from its own directory, with the shipped
configs on Hydra's search path, so a user's overlay can name ``default`` too.

``load_config(name_or_path, overrides)``: compose the config's defaults list (Hydra), merge it over the schema
(a file without a defaults list is thereby an overlay of the defaults), apply the dotted overrides
``trainer.total_steps=50 e3.temperature.enable=false`` (OmegaConf's dot-list, values parsed as YAML), then
``validate``. An unknown key, a value of the wrong type or out of range raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from e3.schema import E3Config, Each, OneOf, Range, check_config, checked, config_error
from e3.tasks.registry import make_task

PACKAGE_CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "config" / "local")
SCHEMA_NAME = "local_schema"
LOGGERS = ("console", "tensorboard", "wandb", "mlflow")


class ConfigError(ValueError):
    """A config file, key or value the local engine cannot run with."""


# ------------------------------------------------------------------------------------------------ the schema
@dataclass
class ChainConfig:
    """The chain task's generator and demonstrator (``task.kind=chain``, ``e3/tasks/chain.py``, which checks the
    rules across keys)."""

    problems_per_level: int = checked(6000, Range(ge=1))
    """A level with more problems is sampled (seeded by ``task.seed``)."""
    step_error_rate: float = checked(0.0, Range(ge=0, lt=1))
    """Noisy demonstrator: chance that a scratchpad step's running value slips by -10/-1/+1/+10."""
    demo_variants: int = checked(1, Range(ge=1))
    """Independently drawn demonstrations per demo problem."""
    demo_levels: Optional[list[str]] = None
    """Levels (specs from ``task.levels``) that have demonstrations; null = all. The others are RL/val only."""


@dataclass
class TaskConfig:
    """The task: graded arithmetic (``e3/tasks/arithmetic.py``), chained arithmetic on a scratchpad
    (``task.kind=chain``, ``e3/tasks/chain.py``; the shipped config ``chain``) or a task of your own. The task
    checks its own rules (level grammar, data files, demonstrator: ``e3.tasks.base.Task.check``)."""

    kind: str = "arithmetic"
    """A registered task (arithmetic, chain, or a name given to ``e3.tasks.registry.register_task``) or
    ``module.path:ClassName`` of a ``e3.tasks.base.Task`` subclass, imported on use."""
    levels: list[str] = field(default_factory=lambda: ["2d+-1d", "2d+-2d", "2d*1d"])
    """Levels, easy -> hard, in the task's level grammar; each composes digit facts, so held-out problems are
    learnable."""
    seed: int = checked(0, Range(ge=0))
    """Seed of the demo/RL/val split and of drawing the train/val sets (fixed across run seeds)."""
    val_fraction: float = checked(0.2, Range(ge=0, lt=1))
    """Share of every level's problems held out for validation."""
    demo_fraction: float = checked(0.3, Range(ge=0, lt=1))
    """Share seen by the warm start (demonstrations); the rest is the RL pool."""
    train_size: int = checked(2048, Range(ge=1))
    """RL prompts drawn from the RL pool (equal share per level, at most the pool)."""
    val_size: int = checked(900, Range(ge=1))
    """Validation problems (equal share per level, at most the pool)."""
    prompt_width: int = checked(7, Range(ge=1))
    """Prompts are left-padded to this many tokens (>= longest prompt + 1)."""
    max_new_tokens: int = checked(4, Range(ge=1))
    """Answer characters + eos (the longest default answer, -89 or 891, has 3)."""
    report_samples: int = checked(0, Range(ge=0))
    """> 0: before RL, sample this many responses per RL prompt and print how hard the prompts are for the warm
    start (never / always solved, pass rate per level; logged as ``task/*`` at step 0)."""
    chain: ChainConfig = field(default_factory=ChainConfig)

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.val_fraction + self.demo_fraction >= 1:
            yield "demo_fraction", (f"plus task.val_fraction must be < 1 (the RL pool would be empty), "
                                    f"got {self.demo_fraction}")
        if not self.levels:
            yield "levels", "must list at least one level"


@dataclass
class DataConfig:
    """Optional files replacing the generated sets (JSONL/parquet: prompt, answer[, level])."""

    train_file: Optional[str] = None
    """RL prompts from this file instead of the generated train set."""
    val_file: Optional[str] = None
    """Validation problems from this file instead of the generated val set."""


@dataclass
class ModelConfig:
    """Llama built from this config; 1.05M parameters at the defaults."""

    hidden_size: int = checked(128, Range(ge=1))
    num_layers: int = checked(4, Range(ge=1))
    num_heads: int = checked(4, Range(ge=1))
    intermediate_size: int = checked(512, Range(ge=1))

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        if self.hidden_size % self.num_heads:
            yield "hidden_size", f"must be divisible by model.num_heads={self.num_heads}, got {self.hidden_size}"


@dataclass
class WarmStartConfig:
    """Supervised warm start on the demo pool, cached by a hash of its inputs."""

    steps: int = checked(400, Range(ge=0))
    """Optimizer steps (0: no warm start)."""
    batch_size: int = checked(256, Range(ge=1))
    lr: float = checked(2.0e-3, Range(gt=0))
    """Peak learning rate of AdamW, cosine down to ``min_lr`` after ``warmup_steps`` of linear warm-up."""
    min_lr: float = checked(2.0e-4, Range(ge=0))
    warmup_steps: int = checked(20, Range(ge=0))
    weight_decay: float = checked(0.0, Range(ge=0))
    demo_error_rate: float = checked(0.25, Range(ge=0, lt=1))
    """Noisy demonstrator: this share of drawn demonstrations slips by -10/-1/+1/+10."""
    prompt_loss: float = checked(0.0, Range(ge=0))
    """Weight of the prompt tokens' loss (answer tokens: 1); > 0 gives the policy a model of its prompts, which
    PREPO's perplexity reads, but even 0.1 slows the warm start ~1.5x."""
    cache_dir: Optional[str] = None
    """Where warm starts are cached (null: ~/.cache/e3/warm_start)."""


@dataclass
class RolloutConfig:
    batch_size: int = checked(32, Range(ge=1))
    """Prompts per step (the PREPO window K when the curriculum is on)."""
    n: int = checked(8, Range(ge=2, why="a group of one has no GRPO baseline"))
    """Mean rollouts per prompt: sum of n_i = batch_size * n every step."""


@dataclass
class TrainerConfig:
    total_steps: int = checked(300, Range(ge=1))
    lr: float = checked(3.0e-5, Range(gt=0))
    """AdamW learning rate of the GRPO steps (on this task 3e-5 learns, 2e-4 collapses, 1e-4 was noise)."""
    weight_decay: float = checked(0.0, Range(ge=0))
    clip_ratio: float = checked(0.2, Range(gt=0))
    """PPO ratio clip."""
    ppo_epochs: int = checked(1, Range(ge=1))
    """Passes over each step's rollouts (1 = on-policy single update)."""
    mini_batches: int = checked(1, Range(ge=1))
    """Optimizer steps per pass."""
    grad_clip: float = checked(1.0, Range(gt=0))
    save_every: int = checked(50, Range(ge=1))
    """Checkpoint period (steps); the last step is always saved."""
    keep_checkpoints: int = checked(2, Range(ge=1))
    val_every: int = checked(100, Range(ge=1))
    """Validation period (steps); step 0 and the last step always validate."""
    logger: list[str] = checked(default_factory=list, check=Each(OneOf(*LOGGERS)))
    """Experiment loggers, as verl's ``trainer.logger``: any of console (a line of scalars per step), tensorboard
    (``<run dir>/tensorboard``), wandb, mlflow (``e3/engines/local/tracking.py``). ``metrics.jsonl`` in the run
    directory is always written, and the progress bar shows without any."""
    project_name: str = "e3_local"
    """Project (wandb project, mlflow experiment) of the loggers."""
    experiment_name: Optional[str] = None
    """Run name in the loggers (null: the run directory's name)."""


@dataclass
class ValConfig:
    n_samples: int = checked(4, Range(ge=1))
    """Samples per validation problem at ``val.temperature`` (mean@n and its standard error)."""
    temperature: float = checked(1.0, Range(gt=0))
    greedy: bool = True
    """Also report greedy accuracy."""
    pass_k: list[int] = checked(default_factory=lambda: [1, 4, 16, 64], check=Each(Range(ge=1)))
    """Unbiased pass@k (Chen et al. 2021) for each k <= ``n_samples``, with its standard error over problems:
    ``val/pass@K``."""


@dataclass
class LocalConfig:
    """The local engine's config: `bash scripts/train.sh` with no arguments runs these defaults (~6 min on 2 cores,
    warm start included; ~3 min once the warm start is cached)."""

    seed: int = checked(0, Range(ge=0))
    device: str = checked("auto", OneOf("auto", "cpu", "cuda"))
    """auto | cpu | cuda."""
    threads: int = checked(1, Range(ge=1))
    """Torch CPU threads (a resumed run is bitwise identical at the same count); 1 is robust when other processes
    share the cores, where 2 threads can be several times slower."""
    run_root: str = "outputs/local"
    """Where a run directory is created when --run-dir is not given."""
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    val: ValConfig = field(default_factory=ValConfig)
    plots: bool = True
    """Write figures with e3.plots.make_figures at the end."""
    e3: E3Config = field(default_factory=E3Config)
    """E3 / PREPO controllers (e3/schema.py); defaults = E3 paper, PREPO off."""

    def cross_checks(self) -> Iterator[tuple[str, str]]:
        batch, n, mb = self.rollout.batch_size, self.rollout.n, self.trainer.mini_batches
        if batch * n % mb:
            yield "trainer.mini_batches", f"must divide rollout.batch_size * rollout.n, got {mb}"
        a = self.e3.allocation
        if a.enable and not a.n_low <= n <= a.n_high:
            yield "rollout.n", (f"must lie in [e3.allocation.n_low, e3.allocation.n_high] = [{a.n_low}, {a.n_high}], "
                                f"got {n}")

    def check(self) -> E3Config:
        """The declared checks of every key and the rules across keys (``check_config``), then the task's own
        (``Task.check``: its levels, data files, demonstrator); returns the checked ``E3Config``."""
        check_config(self)
        make_task(self.task).check(self)
        return self.e3


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=LocalConfig)


# ------------------------------------------------------------------------------------------------ loading
def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (``--config NAME``)."""
    return sorted(p.stem for p in Path(PACKAGE_CONFIG_DIR).glob("*.yaml"))


def resolve(config: Optional[str]) -> tuple[str, str]:
    """(config directory, config name) for a shipped config's name or a YAML file's path (None: ``default``)."""
    if config is None:
        return PACKAGE_CONFIG_DIR, "default"
    config = str(config)
    if config.endswith((".yaml", ".yml")) or os.sep in config or os.path.isfile(config):
        path = os.path.abspath(os.path.expanduser(config))
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {config}")
        return os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    if os.path.isfile(os.path.join(PACKAGE_CONFIG_DIR, f"{config}.yaml")):
        return PACKAGE_CONFIG_DIR, config
    raise ConfigError(f"unknown config {config!r}: not a YAML file, nor a shipped config "
                      f"({', '.join(shipped_configs())})")


def compose(config: Optional[str] = None) -> DictConfig:
    """The config's defaults list composed by Hydra (shipped configs on the search path), as a plain DictConfig."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    directory, name = resolve(config)
    where = os.path.join(directory, f"{name}.yaml")
    overrides = []
    if os.path.realpath(directory) != os.path.realpath(PACKAGE_CONFIG_DIR):
        quoted = PACKAGE_CONFIG_DIR.replace("\\", "\\\\").replace("'", "\\'")  # Hydra's quoted-string grammar
        overrides.append(f"hydra.searchpath=['file://{quoted}']")
    _register_schema()
    try:
        with initialize_config_dir(config_dir=directory, version_base="1.3", job_name="e3_local"):
            cfg = hydra_compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{where}: {_hydra_error(err)}") from None
    except Exception as err:  # a YAML syntax error surfaces as the parser's own exception
        raise ConfigError(f"{where}: cannot read the config ({type(err).__name__}: {err})") from None
    return cfg


def _hydra_error(err: Exception) -> str:
    """The OmegaConf error behind a Hydra composition error (it names the key), else Hydra's first line."""
    cause = err
    while not isinstance(cause, OmegaConfBaseException) and (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OmegaConfBaseException):
        return config_error(cause)
    return str(err).splitlines()[0]


def schema() -> DictConfig:
    """The full schema with its defaults, in struct mode (unknown keys are errors)."""
    return OmegaConf.structured(LocalConfig)


def _merge(base: DictConfig, other, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{config_error(err)} (in {where})") from None


def load_config(config: Optional[str] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Schema <- the config's composed defaults list <- dotted overrides; then ``check_local_config``."""
    cfg = _merge(schema(), compose(config), resolve(config)[1] if config else "default")
    cfg = apply_overrides(cfg, overrides)
    check_local_config(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.total_steps=50)")
    if not overrides:
        return cfg
    try:
        dotlist = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {config_error(err)}") from None
    return _merge(cfg, dotlist, "command-line overrides")


def from_any(config) -> DictConfig:
    """A checked DictConfig from a DictConfig or a dict (merged over the schema), or a config name / YAML path."""
    if isinstance(config, (str, os.PathLike)):
        return load_config(str(config))
    cfg = schema()
    if config is not None:
        cfg = _merge(cfg, OmegaConf.create(config) if isinstance(config, dict) else config, "config")
    check_local_config(cfg)
    return cfg


def check_local_config(cfg: DictConfig) -> E3Config:
    """Types (by the schema) and ranges of every key; returns the typed E3Config."""
    try:
        if OmegaConf.get_type(cfg) is not LocalConfig:
            cfg = _merge(schema(), cfg, "config")
        obj: LocalConfig = OmegaConf.to_object(cfg)
        return obj.check()
    except OmegaConfBaseException as err:
        raise ConfigError(config_error(err)) from None
    except ValueError as err:  # "config key <key> ..." from check_config, "<key> ..." from the task section's rules
        msg = str(err)
        raise ConfigError(msg if msg.startswith("config key") else f"config key {msg}") from None


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
