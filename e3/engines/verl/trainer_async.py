"""E3 / PREPO in verl 0.9.1's colocate_async trainer, registered as ``e3_colocate_async``.

verl's colocate_async trainer (actor and rollout share the GPUs, partial rollouts resume across weight updates)
dispatches ``num_warmup_batches`` x B prompts before step 1 and B more at every step, and trains, at step t, the
B *oldest* finished groups; with one warm-up batch a group is usually trained one step after its dispatch. The
E3 logic is ``E3TrainerMixin``'s (``e3.engines.verl.trainer``); what each decision means here:

- Budgets are planned when prompts are handed to generation, in ``_next_train_batch``, which every dispatch reaches:
  the warm-up (``on_train_begin`` -> ``_add_prompts_to_generate``), the step's ``prepare_step`` and verl's refills
  of evicted groups (stale under ``trainer.v1.sampler.max_off_policy_threshold``, or failed). Each dispatched batch
  spends sum_i n_i = its prompts x rollout.n, as in sync; a refill shares the evicted groups' freed budget
  (``_pop_evicted``). A trained batch can mix dispatches, so ``rollout/n_trained_*`` come from the in-flight record,
  and its rollout count varies around B x rollout.n: verl pads it up to whole mini-batches (ppo_mini_batch_size x
  rollout.n rows), so a batch just above a multiple gets one more, mostly padded, mini-batch.
- The in-flight record (``e3.engines.verl.inflight.InflightPrompts``: uid -> n_i, tau, dispatch step) lives on the
  driver across steps: an entry is added at dispatch, removed when its group is trained (``_compute_old_log_prob``)
  or found evicted. It is saved in ``e3_controller.pt`` (key ``inflight``). On resume verl restores its
  TransferQueue checkpoint and re-issues the pending prompts with their stored columns (budget, tau); the record
  is restored with them, so their budgets, tau and dispatch step stay known and the controller's next decision is
  the one an uninterrupted run makes. Entries verl did not restore are dropped (with a warning); a restored prompt
  the record lacks stops the resume.
- Each rollout is trained at the tau it was sampled with: the prompt batch carries a float32 ``temperature`` column
  (beside the float64 ``__temperature__`` the rollout samples with; the same number, on the logits dtype's grid),
  which verl's agent loop stores on every trajectory and its FSDP / Megatron engines divide the logits by, row by
  row. verl also puts one scalar ``extra_info["temperature"]`` on every training call, and a scalar replaces the
  per-sample field on the worker; so ``_setup`` wraps the worker-group calls ``actor_rollout_wg.compute_log_prob``
  / ``update_actor`` and ``ref_policy_wg.compute_ref_log_prob`` (``per_sample_temperature``) to drop the scalar,
  and they fail loudly if the batch has no per-sample field. Fused kernels (one tau per batch) are refused.
- The scheduler (E3 Eq. 4) steps once per training step (``controller.step``; annealing counts training steps) on
  H_t = the token mean of the ``entropy`` field over the trained rollouts sampled at the latest planned tau, if
  there are any, else over all trained rollouts. The old-log-prob pass computes each rollout's entropy under the
  current policy at that rollout's own tau, and Eq. 4 moves the latest tau by how far the entropy *at that tau* is
  from the target: the rows at the latest tau measure exactly that. When the batch holds none (the usual case with
  one warm-up batch: it trains the previous dispatch) every trained rollout is one or more scheduler updates old,
  and the all-rollout mean is sync's estimator with that delay. Logged: ``rollout/entropy`` (what the scheduler
  saw), ``rollout/entropy_all``, ``rollout/entropy_rows`` and ``rollout/entropy_at_latest_tau`` (which rows),
  ``rollout/tau_lag/{mean,max}`` and ``rollout/tau_lag_count/<k>`` (trained rollouts dispatched k steps earlier),
  ``rollout/temperature`` (mean tau of the trained rollouts) and ``rollout/dispatch_temperature`` (the latest tau).
- Difficulty records are updated once per trained group, at the step it is trained (``observe`` on the trained
  batch); an evicted group gets none.

``check_supported`` (shared with the sync trainer) reads ``trainer.v1.colocate_async.parameter_sync_step`` and
refuses fused kernels; verl's separate_async is refused there for both E3 trainers.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict

from e3.engines.verl.inflight import Dispatch, InflightPrompts, lag_metrics, scheduler_rows
from e3.engines.verl.internals import check_colocate_async
from e3.engines.verl.rollout import ROLLOUT_N_KEY, TEMPERATURE_KEY
from e3.engines.verl.rollouts import response_token_mean, split_key
from e3.engines.verl.trainer import ASYNC_TRAINER_NAME, E3TrainerMixin, verl_mode_property
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync

logger = logging.getLogger(__name__)

TAU_FIELD = "temperature"  # the per-sample key verl's engines divide the logits by (micro_batch["temperature"])
# (worker group attribute, method) whose batches must carry each rollout's own tau
PER_SAMPLE_CALLS = (("actor_rollout_wg", "compute_log_prob"), ("actor_rollout_wg", "update_actor"),
                    ("ref_policy_wg", "compute_ref_log_prob"))


def check_per_sample_temperature(batch, name: str) -> None:
    """Refuse a batch (``KVBatchMeta``) without a finite, positive per-sample ``temperature`` on every row."""
    why = None
    if batch.fields is not None and TAU_FIELD not in batch.fields:
        why = f"its fields are {sorted(batch.fields)}"
    else:
        try:
            taus = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=[TAU_FIELD])[TAU_FIELD]
        except Exception as err:  # TransferQueue names a missing field in its own words
            taus, why = None, f"reading it failed ({type(err).__name__}: {err})"
        if taus is not None and not (isinstance(taus, torch.Tensor) and tuple(taus.shape) == (len(batch),)):
            why = f"it is {type(taus).__name__} {tuple(getattr(taus, 'shape', ()))}, not one value per row"
        elif taus is not None and not bool(torch.all(torch.isfinite(taus) & (taus > 0))):
            why = f"it holds {taus.tolist()[:8]}, not finite temperatures > 0"
    if why is not None:
        raise ValueError(f"{name}: the batch has no usable per-sample `{TAU_FIELD}` field ({why}). "
                         f"{ASYNC_TRAINER_NAME} trains every rollout at the tau it was sampled with, from the "
                         f"float32 `{TAU_FIELD}` column its _next_train_batch adds to each prompt batch, and drops "
                         "verl's batch-wide extra_info temperature")


def per_sample_temperature(call, name: str):
    """A worker-group call (``call(batch: KVBatchMeta, ...)``) that runs without verl's scalar
    ``extra_info["temperature"]``, so the worker divides each row's logits by that row's ``temperature`` field."""
    if getattr(call, "per_sample_temperature", False):
        return call

    @functools.wraps(call)
    def wrapped(batch, *args, **kwargs):
        if batch.extra_info:
            batch.extra_info.pop(TAU_FIELD, None)
        check_per_sample_temperature(batch, name)
        return call(batch, *args, **kwargs)

    wrapped.per_sample_temperature = True
    return wrapped


@register_trainer(ASYNC_TRAINER_NAME)
class E3ColocateAsyncTrainer(E3TrainerMixin, PPOTrainerColocateAsync):
    """verl's colocate_async trainer driven by ``e3.controller.E3Controller`` (see the module docstring)."""

    def __init__(self, config):
        check_colocate_async()
        self._inflight = InflightPrompts()
        self._trained: dict[str, Dispatch] = {}  # the dispatches of the groups the current step trains
        self._latest_tau: float | None = None
        self._entropy_metrics: dict = {}
        super().__init__(config)

    # verl branches on ``trainer_mode != "sync"`` (async replay buffer, exact refills, persisted prompt columns,
    # TransferQueue checkpoints, re-issued prompts)
    trainer_mode = verl_mode_property(ASYNC_TRAINER_NAME)

    def _setup(self):
        super()._setup()
        self.use_per_sample_temperature()

    def use_per_sample_temperature(self) -> None:
        """Wrap the worker groups' training calls (``PER_SAMPLE_CALLS``) with ``per_sample_temperature``."""
        for attr, method in PER_SAMPLE_CALLS:
            group = getattr(self, attr, None)
            if group is not None:
                setattr(group, method, per_sample_temperature(getattr(group, method), f"{attr}.{method}"))

    # ------------------------------------------------------------------ decisions
    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        batch = super()._next_train_batch(num_prompts)
        sampled = batch[TEMPERATURE_KEY]
        taus = sampled.to(torch.float32)
        if not torch.equal(taus.to(torch.float64), sampled):  # tau is on the logits dtype's grid: exact in fp32
            raise ValueError(f"{TEMPERATURE_KEY}={sampled.tolist()[:4]} is not exact in float32")
        batch[TAU_FIELD] = taus
        self._inflight.add([str(u) for u in batch["uid"]], batch[ROLLOUT_N_KEY].tolist(), sampled.tolist(),
                           self.global_steps)
        if len(taus):
            self._latest_tau = float(sampled[-1])
        return batch

    def _pop_evicted(self, live) -> list[int]:
        gone = self._inflight.drop_missing(live)
        for uid in gone:
            self._budgets.pop(uid, None)
        return [d.n for d in gone.values()]

    # ------------------------------------------------------------------ observations
    def _compute_old_log_prob(self, batch, metrics: dict):
        real = [key for key, tag in zip(batch.keys, batch.tags) if not tag.get("is_padding", False)]
        self._trained = self._inflight.take(split_key(key)[0] for key in real)
        self._entropy_metrics = {}
        return super()._compute_old_log_prob(batch, metrics)

    def _scheduler_entropy(self, batch) -> float:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["entropy", "response_mask", TAU_FIELD])
        select, at_latest = scheduler_rows(data[TAU_FIELD].tolist(), self._latest_tau, batch.tags)
        everything = response_token_mean(data["entropy"], data["response_mask"], batch.tags)
        seen = response_token_mean(data["entropy"], data["response_mask"], batch.tags, select=select)
        self._entropy_metrics = {"rollout/entropy_all": everything, "rollout/entropy_rows": int(sum(select)),
                                 "rollout/entropy_at_latest_tau": int(at_latest)}
        return seen

    def _trained_budgets(self) -> dict[str, int]:
        return {uid: d.n for uid, d in self._trained.items()}

    def _trained_metrics(self, uids: list[str]) -> dict:
        out = super()._trained_metrics(uids)
        dispatches = [self._trained[uid] for uid in uids]
        out.update(lag_metrics(self.global_steps, [d.step for d in dispatches]))
        out["rollout/temperature"] = float(np.mean([d.tau for d in dispatches])) if dispatches else math.nan
        out["rollout/dispatch_temperature"] = self._latest_tau
        out["rollout/inflight_prompts"] = len(self._inflight)
        out.update(self._entropy_metrics)
        return out

    # ------------------------------------------------------------------ checkpoints
    def e3_state_dict(self) -> dict:
        return {**super().e3_state_dict(), "inflight": self._inflight.state_dict()}

    def e3_load_state_dict(self, state: dict) -> None:
        super().e3_load_state_dict(state)
        self._inflight.load_state_dict(state.get("inflight") or [])  # none in a sync trainer's checkpoint

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0:
            return
        listed = (tq.kv_list("train") or {}).get("train", {})
        prompts = {key for key, tag in listed.items() if tag.get("is_prompt", False)}
        dropped = self._inflight.drop_missing(prompts)
        if dropped:
            logger.warning("%d in-flight prompt(s) of the checkpoint are not in verl's restored TransferQueue (no "
                           "transfer_queue/ checkpoint?); their budgets are forgotten", len(dropped))
        unknown = sorted(p for p in prompts if p not in self._inflight)
        if unknown:
            raise ValueError(f"verl restored {len(unknown)} in-flight prompt(s) (e.g. uid={unknown[0]}) that the "
                             "checkpoint's e3_controller.pt does not record: their budgets, tau and dispatch step "
                             "are unknown; resume from a checkpoint this trainer wrote")
