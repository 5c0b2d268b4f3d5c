"""Allocation policies: the plug-in point that turns prompt records into per-prompt rollout budgets n_i.

A policy answers one question per step: given the B prompts of the batch, a total of N rollouts and the bounds
[n_min, n_max] of the epoch schedule (E3, Liao et al. 2025, arXiv 2505.18573, section 3.1), how many rollouts does
each prompt get? Which prompts, how many rollouts in total and the bounds are the engine's and the schedule's
business; the policy only splits. This module holds the contract and the checks every policy shares; it imports
no policy (the built-ins are named in ``e3.allocation.registry``).

Contract of a policy (subclass ``AllocationPolicy``):

- ``__init__(self, tracker, seed=0)``: ``tracker`` is the run's ``e3.allocation.allocator.DifficultyTracker``
  (read it, do not write it): per prompt index the cumulative reward sum and rollout count (``accuracy``,
  ``counts``) and the epoch-end difficulty ``k_i = rank_i / |D|`` (``difficulty``). ``seed`` is
  ``e3.allocation.seed``.
- ``allocate(indices, total, n_min, n_max) -> n``: ``indices`` are the batch's prompt indices (dataset row
  ``index``, int64, in batch order); return one integer budget per prompt with ``sum(n) == total`` and
  ``n_min <= n_i <= n_max``. The framework has already checked that such an allocation exists
  (``B * n_min <= total <= B * n_max``, ``n_min >= 2``) and checks the answer (length, integer type, sum, bounds):
  a wrong answer stops the run with an error naming the policy. An empty batch never reaches the policy.
- ``observe(indices, rewards)``: after every step, one entry per rollout (its prompt index and reward), after the
  tracker has seen them. Keep your own per-prompt records here if the tracker's are not what you need.
- ``end_epoch(all_indices)``: after the tracker re-ranked all dataset prompts at an epoch end.
- ``state_dict()`` / ``load_state_dict(state)``: the policy's own state for checkpoints, of plain Python types
  (lists, dicts, numbers, strings) so that ``torch.save``, pickle and JSON all keep it. Restoring it must make the
  next decisions identical to those of an uninterrupted run.
- ``metrics()``: scalars logged every step under ``allocation/<key>``.

Selection (``e3.allocation.policy``) is ``e3.allocation.registry``'s: a registered name or ``module.path:Class``.
A plain function ``f(tracker, indices, total, n_min, n_max) -> n`` is accepted too and wrapped as a stateless
``FunctionPolicy``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CONFIG_KEY = "e3.allocation.policy"
MIN_GROUP = 2
"""The smallest group a budget may give a prompt: a group of one rollout has no GRPO baseline."""


class AllocationPolicy:
    """Base class of every allocation policy (see the module docstring for the contract)."""

    def __init__(self, tracker, seed: int = 0):
        self.tracker = tracker
        self.seed = int(seed)

    def allocate(self, indices: np.ndarray, total: int, n_min: int, n_max: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.allocate")

    def observe(self, indices: np.ndarray, rewards: np.ndarray) -> None:
        """Per-rollout prompt indices and rewards of a finished step (default: nothing to learn)."""

    def end_epoch(self, all_indices: np.ndarray) -> None:
        """Called at every epoch end, after the tracker's ranking (default: nothing)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (default: stateless)."""

    def metrics(self) -> dict:
        return {}


class FunctionPolicy(AllocationPolicy):
    """A stateless policy from a function ``f(tracker, indices, total, n_min, n_max) -> n``."""

    fn: Callable = staticmethod(lambda tracker, indices, total, n_min, n_max: None)

    def allocate(self, indices, total, n_min, n_max):
        return type(self).fn(self.tracker, indices, total, n_min, n_max)


def check_budget(size: int, total: int, n_min: int, n_max: int) -> None:
    """Refuse (``ValueError`` with the numbers) bounds or a total that no allocation of ``size`` prompts can meet."""
    if n_min < MIN_GROUP:
        raise ValueError(f"n_min={n_min} < {MIN_GROUP}: a group of one rollout has no GRPO baseline")
    if n_max < n_min:
        raise ValueError(f"n_max={n_max} < n_min={n_min}")
    if total < size * n_min:
        raise ValueError(f"total={total} < {size} prompts x n_min={n_min} = {size * n_min}: budget cannot be met")
    if total > size * n_max:
        raise ValueError(f"total={total} > {size} prompts x n_max={n_max} = {size * n_max}: budget cannot be spent")


def check_allocation(out, policy: str, size: int, total: int, n_min: int, n_max: int) -> np.ndarray:
    """The policy's answer as int64 after checking length, integer type, sum and bounds (``ValueError`` else)."""
    where = f"allocation policy {policy!r} ({CONFIG_KEY})"
    if out is None:
        raise ValueError(f"{where} returned None; allocate() must return one integer budget per prompt")
    arr = np.asarray(out)
    if arr.ndim != 1 or arr.shape[0] != size:
        raise ValueError(f"{where} returned shape {arr.shape} for a batch of {size} prompts; "
                         "need one budget per prompt")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise ValueError(f"{where} returned {arr.dtype} budgets; rollout counts must be integers")
    n = arr.astype(np.int64)
    if int(n.sum()) != int(total):
        raise ValueError(f"{where} returned budgets summing to {int(n.sum())}, but this step's total is {total}")
    bad = np.flatnonzero((n < n_min) | (n > n_max))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where} gave prompt {i} of the batch {int(n[i])} rollouts, outside the step's bounds "
                         f"[n_min, n_max] = [{n_min}, {n_max}] ({bad.size} prompt(s) out of bounds)")
    return n


def check_pass_rates(p) -> np.ndarray:
    """Pass-rate estimates as float64, refused unless finite and in [0, 1] (value tables of informative, knapsack)."""
    p = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("pass rates must be finite and in [0, 1]")
    return p
