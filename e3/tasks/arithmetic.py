"""The local engine's embedded task: graded integer arithmetic on a 16-symbol character vocabulary.

A problem is ``"<a><op><b>="`` with a verifiable integer answer (exact string match of the canonical decimal).
Levels are named by a spec ``"<digits of a>d<ops><digits of b>d"``: the default ``"2d+-1d"`` (two-digit +/- one
digit), ``"2d+-2d"`` and ``"2d*1d"`` (two-digit x one-digit) are graded by construction and all compose digit facts,
so a held-out problem is learnable from others (a one-digit fact such as ``"3*4="`` is not: it can only be
memorised, which is why ``"1d+-*1d"`` is available but not a default level).

Every problem of a level is enumerated and assigned, by a stable hash of its text (``e3.tasks.base.pool_of``), to
one of three disjoint pools:
``demo`` (demonstrations: the only problems the supervised warm start sees), ``rl`` (prompts with a verifiable
answer but no demonstration: the RL training set) and ``val`` (held out from both). This is the RLVR setting in
miniature: demonstrations are scarce, verifiable prompts are plentiful, so the gain from RL on the ``rl`` pool is
headroom that more supervised training on the ``demo`` pool does not fill.

Why not reasoning-gym: its arithmetic prompts are English instructions (``"Calculate 12 + 34. Give only the
result."``) of 40-120 characters over ~60 distinct characters. A 1M-parameter character model on two CPU cores
would spend its capacity and most of each step's tokens reading the instruction, and a sub-word tokenizer would need
training data and a hub-free build. Here a prompt is <= 8 tokens and an answer <= 5, so a whole GRPO step of
~200 rollouts fits in a fraction of a second. The same ideas (procedural generator, difficulty knob, exact
verifier) take ~150 lines.

Data files (``data.train_file`` / ``data.val_file``) may replace the generated sets: JSONL or parquet rows with
``prompt`` and an answer under ``answer``, ``ground_truth`` or ``reward_model.ground_truth`` (verl's column), and an
optional integer ``level``. Every row is checked before training; the first bad one raises ``e3.io.DataError`` naming
file, line (JSONL, 1-based) or row (parquet, 0-based) and field.

The demonstrator of the warm start may slip (``warm_start.demo_error_rate``): an answer off by one of ``SLIPS``,
-10, -1, +1, +10 (a dropped carry or a wrong last digit). ``ArithmeticTask`` is all of this as ``task.kind=arithmetic``
(``e3.tasks.base.Task``).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from e3.io import DataError, atomic_write_jsonl, iter_jsonl
from e3.tasks.base import Task, pool_of
from e3.tasks.vocab import SYMBOLS, CharTokenizer

def score(response: str, answer: str) -> float:
    """The task's verifier: 1.0 when the decoded response is exactly the canonical answer."""
    return 1.0 if response == answer else 0.0


_SPEC = re.compile(r"^([1-4])d([+\-*]+)([1-4])d$")


@dataclass(frozen=True)
class Level:
    """One difficulty level, parsed from a spec such as ``"2d*1d"``."""

    spec: str
    a_digits: int
    ops: str
    b_digits: int

    @classmethod
    def parse(cls, spec: str) -> "Level":
        m = _SPEC.match(spec)
        if not m:
            raise ValueError(f"task.levels: bad level spec {spec!r} (want e.g. '1d+-*1d', '2d+-2d', '2d*1d')")
        return cls(spec, int(m.group(1)), m.group(2), int(m.group(3)))

    def operands(self, digits: int) -> range:
        return range(0, 10) if digits == 1 else range(10 ** (digits - 1), 10 ** digits)

    def problems(self) -> list[tuple[str, str]]:
        """Every (prompt, answer) of the level, in a fixed order."""
        out = []
        for a, op, b in itertools.product(self.operands(self.a_digits), self.ops, self.operands(self.b_digits)):
            value = a + b if op == "+" else a - b if op == "-" else a * b
            out.append((f"{a}{op}{b}=", str(value)))
        return out


def build_pools(levels: list[str], seed: int, val_fraction: float, demo_fraction: float) -> dict[str, list[dict]]:
    """All problems of all levels split into the three disjoint pools; rows are {prompt, answer, level}."""
    pools: dict[str, list[dict]] = {"demo": [], "rl": [], "val": []}
    for li, spec in enumerate(levels):
        for prompt, answer in Level.parse(spec).problems():
            pools[pool_of(prompt, seed, val_fraction, demo_fraction)].append(
                {"prompt": prompt, "answer": answer, "level": li})
    return pools


SLIPS = (-10, -1, 1, 10)
"""The noisy demonstrator's slips of an answer: a dropped carry or a wrong last digit."""


def slip_rows(rows: list[dict], delta: int, max_answer_len: int) -> list[dict]:
    """The rows with answer + delta (a carry or last-digit slip); kept correct where the slip would not fit."""
    out = []
    for r in rows:
        wrong = str(int(r["answer"]) + delta)
        out.append({**r, "answer": wrong if len(wrong) <= max_answer_len else r["answer"]})
    return out


def _answer_of(row: dict) -> Optional[object]:
    for key in ("answer", "ground_truth"):
        if row.get(key) is not None:
            return row[key]
    rm = row.get("reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        return rm["ground_truth"]
    return None


def load_rows(path: str, tokenizer: CharTokenizer, prompt_width: int, max_answer_len: int) -> list[dict]:
    """Read and check a JSONL or parquet task file; raise ``DataError`` naming file, line (JSONL) or row (parquet)
    and field."""
    if not os.path.isfile(path):
        raise DataError(path, message="dataset file not found")
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            raw = list(enumerate(pq.read_table(path).to_pylist()))
        except Exception as err:  # unreadable or truncated parquet
            raise DataError(path, message=f"cannot read dataset file ({type(err).__name__}: {err})") from None
        where = "row"
    else:
        raw, where = list(iter_jsonl(path)), "line"  # DataError names the line of a bad byte or bad JSON
    if not raw:
        raise DataError(path, message="dataset file has no rows")
    rows = []
    for r, row in raw:
        def bad(field, message):
            return DataError(path, field=field, message=message, **{where: r})

        if not isinstance(row, dict):
            raise bad(None, "expected an object with fields prompt and answer")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise bad("prompt", "missing or not a non-empty string")
        chars = sorted(set(prompt) - set(SYMBOLS))
        if chars:
            raise bad("prompt", f"has characters outside the vocabulary {SYMBOLS!r}: {chars}")
        if len(prompt) > prompt_width:
            raise bad("prompt", f"is {len(prompt)} characters, task.prompt_width is {prompt_width}")
        answer = _answer_of(row)
        if answer is None or str(answer).strip() == "":
            raise bad("answer", "no ground truth (field 'answer', 'ground_truth' or 'reward_model.ground_truth')")
        answer = str(answer).strip()
        if not re.fullmatch(r"-?\d+", answer) or len(answer) > max_answer_len:
            raise bad("answer", f"{answer!r} is not an integer of at most {max_answer_len} characters")
        level = row.get("level", 0)
        if isinstance(level, float) and level.is_integer():
            level = int(level)
        if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 0:
            raise bad("level", f"must be a non-negative integer, got {level!r}")
        rows.append({"prompt": prompt, "answer": answer, "level": int(level)})
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    """Write rows atomically (``e3.io.atomic_path``)."""
    atomic_write_jsonl(path, rows)


class ArithmeticTask(Task):
    """``task.kind=arithmetic``: the graded arithmetic above; the train / val sets may come from data files, and
    the demonstrator slips an answer by one of ``SLIPS``."""

    data_files = True
    slips = SLIPS

    def parse_level(self, spec: str) -> Level:
        return Level.parse(spec)

    def pools(self) -> dict[str, list[dict]]:
        t = self.cfg
        return build_pools([str(s) for s in t.levels], int(t.seed), float(t.val_fraction), float(t.demo_fraction))

    def read_rows(self, path: str) -> list[dict]:
        return load_rows(path, self.tokenizer(), int(self.cfg.prompt_width), int(self.cfg.max_new_tokens) - 1)

    def slip(self, rows: list[dict], slip: int, max_answer_len: int) -> list[dict]:
        return slip_rows(rows, slip, max_answer_len)

    def cache_payload(self) -> dict:
        payload = super().cache_payload()
        del payload["kind"]  # the key from before task.kind existed: existing warm-start caches stay valid
        return payload
