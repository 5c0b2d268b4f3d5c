"""The local engine's second embedded task: chained arithmetic worked out on a scratchpad.

Built so that the conditions of math RL hold under its warm start (E3, Liao et al. 2025, section 4; Yue et al. 2025,
"Does Reinforcement Learning Really Incentivize Reasoning Capacity in LLMs Beyond the Base Model?"): the answer
needs several tokens of work, so sampling diversity matters; the difficulty spread is wide (many prompts never
solved in 8 samples, many always solved); and success on the hardest problems comes from the warm start's
diverse sampling rather than from a skill, which is what plain GRPO trades away when it sharpens the policy.

A problem applies ``steps`` operations to a start number, left to right: ``"47+8-3+9="``. The response is the
scratchpad: the start number, then one step per operation, ``<op><operand>=<running value>``:
``"47+8=55-3=52+9=61"``. Each step copies the next operation from the prompt (an induction-head lookup: find the
previous operation in the prompt, take the one after it) and does one small sum whose operands sit just before it
in the response. The verifier reads the text after the last ``=`` (the whole response when there is none) and
compares it with the true value: an outcome reward, the scratchpad itself is not checked, as in math RL.

Levels are named ``"<start digits>d<ops><operand digits>dx<steps>"``, e.g. ``"2d+-1dx3"`` (a two-digit start,
three +/- steps with one-digit operands) or ``"2d*1dx1"``. A level with more problems than
``task.chain.problems_per_level`` is sampled (seeded by ``task.seed``); the problems are split into the disjoint
``demo`` / ``rl`` / ``val`` pools by the same stable hash as the arithmetic task (``e3.tasks.base.pool_of``).

The demonstrator is noisy per step: with probability ``task.chain.step_error_rate`` a step's running value slips by
one of -10, -1, +1, +10 (a dropped carry, a wrong last digit), and the demonstrator carries on correctly from the
slipped value, so one slip makes the final answer wrong. Each demonstrated problem gets
``task.chain.demo_variants`` independently drawn scratchpads (the warm start samples among them), so the warm
start learns the demonstrator's spread of answers rather than one fixed mistake per problem. The chance that a
demonstration of an L-step problem is right is (1 - q)^L: long chains are rarely demonstrated correctly, which
gives the task its hard tail.

``task.chain.demo_levels`` (default: all) names the levels that have demonstrations; the others appear only as RL
and validation prompts, harder than anything demonstrated (longer chains, or steps composed in a new way), as
competition problems are harder than the worked solutions a base model saw.

Demo rows carry the full scratchpad under ``answer`` (the warm start's target text); RL and validation rows carry
the final value (the verifier's ground truth). ``ChainTask`` is all of this as ``task.kind=chain``
(``e3.tasks.base.Task``); its keys are ``task.chain.*``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from e3.schema import _check
from e3.tasks.arithmetic import SLIPS
from e3.tasks.base import Task, plain, pool_of
_SPEC = re.compile(r"^([1-3])d([+\-*]+)([1-2])dx([1-9])$")


@dataclass(frozen=True)
class ChainLevel:
    """One difficulty level, parsed from a spec such as ``"2d+-1dx3"``."""

    spec: str
    start_digits: int
    ops: str
    operand_digits: int
    steps: int

    @classmethod
    def parse(cls, spec: str) -> "ChainLevel":
        m = _SPEC.match(str(spec))
        if not m:
            raise ValueError(f"task.levels: bad chain level spec {spec!r} (want '<start digits>d<ops><operand "
                             f"digits>dx<steps>', e.g. '2d+-1dx3' or '2d*1dx1')")
        return cls(str(spec), int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))

    def _operands(self, digits: int, start: bool) -> range:
        if digits == 1:
            return range(0 if start else 1, 10)
        return range(10 ** (digits - 1), 10 ** digits)

    def count(self) -> int:
        per_step = len(self.ops) * len(self._operands(self.operand_digits, False))
        return len(self._operands(self.start_digits, True)) * per_step ** self.steps

    def problems(self, limit: int, rng: np.random.Generator) -> list[tuple[int, tuple]]:
        """(start, ((op, operand), ...)) for every problem when there are at most ``limit``, else ``limit`` distinct
        ones drawn uniformly."""
        starts = list(self._operands(self.start_digits, True))
        moves = [(op, d) for op in self.ops for d in self._operands(self.operand_digits, False)]
        if self.count() <= limit:
            return [(a, chain) for a in starts for chain in itertools.product(moves, repeat=self.steps)]
        seen: set = set()
        out = []
        while len(out) < limit:
            a = starts[int(rng.integers(len(starts)))]
            chain = tuple(moves[int(i)] for i in rng.integers(len(moves), size=self.steps))
            if (a, chain) not in seen:
                seen.add((a, chain))
                out.append((a, chain))
        return out


def apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def prompt_of(start: int, chain: tuple) -> str:
    return f"{start}" + "".join(f"{op}{d}" for op, d in chain) + "="


def scratchpad(start: int, chain: tuple, slips: tuple = ()) -> tuple[str, int]:
    """(scratchpad text, final value); ``slips[i]`` is added to step i's running value (0 = a correct step)."""
    value, parts = start, [str(start)]
    for i, (op, d) in enumerate(chain):
        value = apply(value, op, d) + (slips[i] if i < len(slips) else 0)
        parts.append(f"{op}{d}={value}")
    return "".join(parts), value


def final_answer(response: str) -> str:
    """The text after the last ``=`` of a response (the whole response when it has none)."""
    return response.rsplit("=", 1)[-1]


def score(response: str, answer: str) -> float:
    """The task's verifier: 1.0 when the response's final answer is exactly the true value."""
    return 1.0 if final_answer(response) == answer else 0.0


def noisy_demos(problems: list[tuple], levels: list[int], variants: int, error_rate: float,
                rng: np.random.Generator) -> list[dict]:
    """``variants`` scratchpads per problem from the per-step noisy demonstrator."""
    rows = []
    for (start, chain), lv in zip(problems, levels):
        for _ in range(variants):
            slip = rng.random(len(chain)) < error_rate
            deltas = tuple(int(SLIPS[int(rng.integers(len(SLIPS)))]) if s else 0 for s in slip)
            text, _ = scratchpad(start, chain, deltas)
            rows.append({"prompt": prompt_of(start, chain), "answer": text, "level": lv})
    return rows


def build_pools(levels: list[str], seed: int, val_fraction: float, demo_fraction: float, problems_per_level: int,
                demo_variants: int, step_error_rate: float, demonstrated: Optional[list[str]] = None
                ) -> dict[str, list[dict]]:
    """The three disjoint pools; demo rows hold noisy scratchpads, rl/val rows the true final value. Levels not in
    ``demonstrated`` (None: all) get no demonstrations: their demo-pool share is left unused."""
    pools: dict[str, list[dict]] = {"demo": [], "rl": [], "val": []}
    demo_problems, demo_levels = [], []
    for li, spec in enumerate(levels):
        lv = ChainLevel.parse(spec)
        for start, chain in lv.problems(problems_per_level, np.random.default_rng([seed, li, 1])):
            prompt = prompt_of(start, chain)
            where = pool_of(prompt, seed, val_fraction, demo_fraction)
            if where == "demo":
                if demonstrated is None or spec in demonstrated:
                    demo_problems.append((start, chain))
                    demo_levels.append(li)
            else:
                pools[where].append({"prompt": prompt, "answer": str(scratchpad(start, chain)[1]), "level": li})
    pools["demo"] = noisy_demos(demo_problems, demo_levels, demo_variants, step_error_rate,
                                np.random.default_rng([seed, 2]))
    return pools


class ChainTask(Task):
    """``task.kind=chain``: the chained arithmetic above, generated only; its demonstrator's noise is in the demo rows
    (``task.chain.step_error_rate``), so it has no slips to draw in the warm start."""

    answer_is_response = False  # train / val rows hold the final value; the response is the whole scratchpad

    def parse_level(self, spec: str) -> ChainLevel:
        return ChainLevel.parse(spec)

    def pools(self) -> dict[str, list[dict]]:
        t, c = self.cfg, self.cfg.chain
        demonstrated = None if c.demo_levels is None else [str(s) for s in c.demo_levels]
        return build_pools([str(s) for s in t.levels], int(t.seed), float(t.val_fraction), float(t.demo_fraction),
                           int(c.problems_per_level), int(c.demo_variants), float(c.step_error_rate), demonstrated)

    def final_answer(self, response: str) -> str:
        return final_answer(response)

    def cache_payload(self) -> dict:
        return {**super().cache_payload(), "chain": plain(self.cfg.chain)}

    def check(self, cfg) -> None:
        _check(cfg.warm_start.demo_error_rate == 0, "warm_start.demo_error_rate",
               f"must be 0 with task.kind=chain (its demonstrator slips per step: task.chain.step_error_rate), "
               f"got {cfg.warm_start.demo_error_rate}")
        super().check(cfg)
        c = cfg.task.chain  # (the ranges of task.chain.* are declared with its fields)
        _check(c.demo_levels is None or (len(c.demo_levels) > 0 and set(c.demo_levels) <= set(cfg.task.levels)),
               "task.chain.demo_levels", f"must be null or a non-empty list of specs from task.levels, "
               f"got {c.demo_levels}")
