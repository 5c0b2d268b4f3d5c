"""What a task of the tiny runs provides: the ``Task`` interface the local engine (and the verl CPU run) asks.

A task is a class constructed from the ``task`` config section (``levels``, ``seed``, ``val_fraction``,
``demo_fraction``, ``train_size``, ``val_size``, ``prompt_width``, ``max_new_tokens``, and its own keys such as
``task.chain.*``); construction is cheap, the work happens in the methods. It gives:

- its vocabulary: ``tokenizer()`` (a ``CharTokenizer``; the model's vocabulary is its size);
- its level grammar: ``parse_level(spec)``, raising ``ValueError`` that names ``task.levels``;
- its prompts: ``pools()`` splits every level's problems into the disjoint ``demo`` / ``rl`` / ``val`` pools of
  rows ``{prompt, answer, level}``; ``rows(train_file, val_file)`` draws the train and val sets from them (or, for a
  task with ``data_files``, reads them with ``read_rows``) and returns ``(demo, train, val)``;
- its verifier: ``score(response, answer)`` (1.0 or 0.0) and ``final_answer(response)``, the part of a response
  that the verifier compares (the start-up report counts distinct final answers);
- its demonstrator: the ``demo`` rows are the warm start's targets; ``slips`` and ``slip(rows, slip,
  max_answer_len)`` are the noisy demonstrator of ``warm_start.demo_error_rate`` (each drawn demonstration is
  replaced, with that probability, by one of its slipped variants: ``demo_variants``);
- its cache payload: ``cache_payload()``, everything of the task section that determines the warm start;
- its own config checks: ``check(cfg)`` on the whole config, raising ``ValueError`` that starts with the key.

A subclass implements ``parse_level`` and ``pools`` at least; the rest has defaults (arithmetic's vocabulary, the
whole response as the final answer, exact match, no slips, no data files). ``pool_of`` (a stable hash split) and
``sample_rows`` (an equal share per level) are the helpers the project's tasks build their pools and sets with.
``task.kind`` selects the class (``e3.tasks.registry``): a registered name or ``module.path:ClassName``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Optional

import numpy as np

from e3.tasks.vocab import CharTokenizer

_PAYLOAD_KEYS = ("levels", "seed", "val_fraction", "demo_fraction", "prompt_width", "max_new_tokens")


class Task:
    """Base class of every task (the interface is the module docstring); ``cfg`` is the ``task`` config section."""

    data_files: bool = False
    """Whether ``data.train_file`` / ``data.val_file`` may replace the generated train / val sets (``read_rows``)."""
    answer_is_response: bool = True
    """Whether a train / val row's ``answer`` is the whole expected response, so that it must fit in
    ``task.max_new_tokens`` (False where the verifier reads a final value out of a longer response)."""
    slips: tuple = ()
    """The noisy demonstrator's slips (``slip`` applies one to demonstrations); none: ``warm_start.demo_error_rate``
    must be 0."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    # -- vocabulary and level grammar ------------------------------------------------------------------------
    def tokenizer(self) -> CharTokenizer:
        """The task's vocabulary (default: the arithmetic task's 16 symbols)."""
        return CharTokenizer()

    def parse_level(self, spec: str) -> Any:
        """The level that ``spec`` (an entry of ``task.levels``) names; ``ValueError("task.levels: ...")`` if none."""
        raise NotImplementedError(f"{type(self).__name__}.parse_level")

    # -- prompts ---------------------------------------------------------------------------------------------
    def pools(self) -> dict[str, list[dict]]:
        """Every level's problems in the disjoint ``demo`` / ``rl`` / ``val`` pools; rows ``{prompt, answer, level}``
        with ``level`` the index in ``task.levels``."""
        raise NotImplementedError(f"{type(self).__name__}.pools")

    def read_rows(self, path: str) -> list[dict]:
        """Rows ``{prompt, answer, level}`` of a data file, every one checked (``e3.io.DataError`` naming file,
        line or row, and field); only for a task with ``data_files``."""
        raise NotImplementedError(f"{type(self).__name__}.read_rows")

    def rows(self, train_file: Optional[str] = None, val_file: Optional[str] = None
             ) -> tuple[list[dict], list[dict], list[dict]]:
        """(demo, train, val): the demo pool, and ``task.train_size`` / ``task.val_size`` rows drawn from the rl / val
        pools (an equal share per level, seeded by ``task.seed``) unless a data file gives the set."""
        t = self.cfg
        pools, n_levels = self.pools(), len(t.levels)
        rng = np.random.default_rng(int(t.seed))
        train = self.read_rows(train_file) if train_file else sample_rows(pools["rl"], n_levels, int(t.train_size), rng)
        val = self.read_rows(val_file) if val_file else sample_rows(pools["val"], n_levels, int(t.val_size), rng)
        return pools["demo"], train, val

    # -- verifier --------------------------------------------------------------------------------------------
    def final_answer(self, response: str) -> str:
        """The part of a response the verifier compares (default: all of it)."""
        return response

    def score(self, response: str, answer: str) -> float:
        """1.0 when the response's final answer is exactly ``answer``, else 0.0."""
        return 1.0 if self.final_answer(response) == answer else 0.0

    # -- demonstrator ----------------------------------------------------------------------------------------
    def slip(self, rows: list[dict], slip: Any, max_answer_len: int) -> list[dict]:
        """``rows`` as the noisy demonstrator writes them when it makes ``slip`` (one of ``slips``); an answer that
        would not fit in ``max_answer_len`` characters stays correct."""
        raise NotImplementedError(f"{type(self).__name__}.slip")

    def demo_variants(self, rows: list[dict], max_answer_len: int) -> list[list[dict]]:
        """One slipped copy of the demonstrations per slip: what a drawn demonstration becomes when the demonstrator
        errs (``warm_start.demo_error_rate``)."""
        return [self.slip(rows, s, max_answer_len) for s in self.slips]

    # -- warm-start cache and config checks ------------------------------------------------------------------
    def cache_payload(self) -> dict:
        """What of the task section determines the warm start (part of its cache key). Override to add what else
        does (keys of your own, a vocabulary of your own)."""
        return {**{k: plain(getattr(self.cfg, k)) for k in _PAYLOAD_KEYS}, "kind": str(self.cfg.kind)}

    def check(self, cfg: Any) -> None:
        """The task's checks of the whole config (``ValueError`` starting with the config key): every entry of
        ``task.levels`` parses, data files only for a task that reads them, a demonstrator error rate only for a
        demonstrator that slips."""
        for spec in cfg.task.levels:
            try:
                self.parse_level(str(spec))
            except ValueError as err:
                raise ValueError(f"task.levels {str(err).removeprefix('task.levels: ')}") from None
        if not self.data_files and (cfg.data.train_file or cfg.data.val_file):
            raise ValueError(f"data.train_file and data.val_file are for tasks that read data files; "
                             f"task.kind={cfg.task.kind} generates its train and val sets")
        if not self.slips and cfg.warm_start.demo_error_rate != 0:
            raise ValueError(f"warm_start.demo_error_rate must be 0 with task.kind={cfg.task.kind} (its demonstrator "
                             f"has no slips), got {cfg.warm_start.demo_error_rate}")


def pool_of(prompt: str, seed: int, val_fraction: float, demo_fraction: float) -> str:
    """Stable assignment of a problem to ``val`` / ``demo`` / ``rl`` from a hash of its text and the task seed."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{prompt}".encode(), digest_size=8).digest(), "big") / 2.0 ** 64
    return "val" if h < val_fraction else "demo" if h < val_fraction + demo_fraction else "rl"


def sample_rows(pool: list[dict], n_levels: int, size: int, rng: np.random.Generator) -> list[dict]:
    """Up to ``size`` distinct rows, an equal share per level (a level with a smaller pool gives all it has)."""
    by_level = [[r for r in pool if r["level"] == li] for li in range(n_levels)]
    by_level = [rows for rows in by_level if rows]
    rows = []
    for i, level_rows in enumerate(by_level):
        share = min(len(level_rows), size // len(by_level) + (1 if i < size % len(by_level) else 0))
        rows += [level_rows[j] for j in rng.choice(len(level_rows), size=share, replace=False)]
    return [rows[j] for j in rng.permutation(len(rows))]


def plain(value: Any) -> Any:
    """A config value as plain Python (an OmegaConf node or a dataclass converted)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
