"""What E3 decided for each prompt still in generation under verl's colocate_async trainer (pure; no verl import).

In colocate_async a prompt handed to generation at step d (warm-up, the step's dispatch, or a refill) is trained at
a step t >= d (verl's replay buffer takes finished groups oldest first) or evicted (stale, failed) and never
trained. ``InflightPrompts`` keeps, per prompt uid, its ``Dispatch``: the budget n_i, the tau it is sampled with and
d, from dispatch until the group is trained (``take``) or found evicted (``drop_missing``). It is part of the
controller checkpoint, since verl's TransferQueue checkpoint carries in-flight prompts across a restart.

``scheduler_rows`` picks the rollouts whose entropy the temperature scheduler sees; ``lag_metrics`` says how far
behind the controller the trained rollouts' tau is (``e3.engines.verl.trainer_async`` says why).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Dispatch(NamedTuple):
    """One prompt handed to generation: its budget n_i, its sampling tau, the training step it was dispatched at."""

    n: int
    tau: float
    step: int


class InflightPrompts:
    """uid -> ``Dispatch`` of every prompt dispatched and not yet trained or evicted, in dispatch order."""

    def __init__(self):
        self._by_uid: dict[str, Dispatch] = {}

    def __len__(self) -> int:
        return len(self._by_uid)

    def __contains__(self, uid: str) -> bool:
        return uid in self._by_uid

    def add(self, uids, budgets, taus, step: int) -> None:
        uids, budgets, taus = list(uids), list(budgets), list(taus)
        if not len(uids) == len(budgets) == len(taus):
            raise ValueError(f"{len(uids)} uids, {len(budgets)} budgets and {len(taus)} temperatures")
        for uid, n, tau in zip(uids, budgets, taus):
            if uid in self._by_uid:
                raise ValueError(f"prompt uid={uid} is dispatched twice (still in flight since step "
                                 f"{self._by_uid[uid].step})")
            self._by_uid[str(uid)] = Dispatch(int(n), float(tau), int(step))

    def take(self, uids) -> dict[str, Dispatch]:
        """Remove and return the dispatches of the trained groups ``uids`` (repeats allowed: one per rollout)."""
        wanted = list(dict.fromkeys(str(u) for u in uids))
        unknown = [u for u in wanted if u not in self._by_uid]
        if unknown:
            raise KeyError(f"trained prompt uid(s) {unknown[:5]} were never dispatched by this trainer (or were "
                           "already trained): the in-flight record and verl's replay buffer disagree")
        return {u: self._by_uid.pop(u) for u in wanted}

    def drop_missing(self, live) -> dict[str, Dispatch]:
        """Remove and return the dispatches whose uid is not among ``live`` (verl evicted or never kept them)."""
        gone = [u for u in self._by_uid if u not in live]
        return {u: self._by_uid.pop(u) for u in gone}

    def state_dict(self) -> list[list]:
        return [[uid, d.n, d.tau, d.step] for uid, d in self._by_uid.items()]

    def load_state_dict(self, state) -> None:
        self._by_uid = {}
        for uid, n, tau, step in state:
            self.add([uid], [n], [tau], step)


def scheduler_rows(taus, latest_tau: float | None, tags=None) -> tuple[list[bool], bool]:
    """The rows whose entropy the scheduler sees: the real rows sampled at ``latest_tau`` when there is one, else
    every real row. Returns the per-row selection and whether it is the rows at ``latest_tau``."""
    taus = [float(t) for t in taus]
    tags = tags if tags is not None else [{} for _ in taus]
    if len(tags) != len(taus):
        raise ValueError(f"{len(taus)} temperatures but {len(tags)} tags")
    real = [not tag.get("is_padding", False) for tag in tags]
    at_latest = [r and latest_tau is not None and t == float(latest_tau) for r, t in zip(real, taus)]
    return (at_latest, True) if any(at_latest) else (real, False)


def lag_metrics(step: int, dispatch_steps) -> dict:
    """Per trained rollout, lag = training step - dispatch step: how many scheduler updates its tau is behind.

    ``rollout/tau_lag/{mean,max}`` and ``rollout/tau_lag_hist`` (one lag per rollout; verl's trackers get the counts
    ``rollout/tau_lag_count/<lag>``).
    """
    lags = int(step) - np.asarray(list(dispatch_steps), dtype=np.int64)
    if lags.size and lags.min() < 0:
        raise ValueError(f"a rollout trained at step {step} was dispatched later, at step {int(step - lags.min())}")
    if not lags.size:
        return {}
    return {"rollout/tau_lag/mean": float(lags.mean()), "rollout/tau_lag/max": int(lags.max()),
            "rollout/tau_lag_hist": lags.tolist()}
