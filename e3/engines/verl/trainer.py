"""E3 / PREPO as a verl 0.9.1 v1 trainer, registered as ``e3`` (``trainer.v1.trainer_mode=e3``).

``E3TrainerMixin`` carries the controller's decisions on verl's ``PPOTrainer`` hooks; ``E3Trainer`` is it on verl's
synchronous trainer. The same mixin on verl's colocate_async trainer is ``e3_colocate_async``
(``e3.engines.verl.trainer_async``, which says what each decision means under asynchrony). No verl file is copied.
Per step of verl's ``PPOTrainer.fit`` loop (sync):

- ``on_step_begin``: tau_t (E3 Eq. 4-5) -> ``actor_rollout_ref.rollout.temperature`` on the driver. verl's trainer
  copies that value into ``batch.extra_info["temperature"]`` for the old-log-prob, ref and update passes, and the
  FSDP/Megatron engines divide the logits by it — so training uses the tau the step was sampled with. tau_0 *is*
  ``rollout.temperature`` (``e3.temperature.init_temperature`` follows it; a contradicting value is refused), and
  every tau is emitted on the grid of the logits dtype (``logits_dtype``: bf16 under verl's default mixed
  precision), since the engine casts tau to that dtype while the sampler takes it as given.
- ``_next_train_batch``: prompts (a PREPO paced window when the offline curriculum is on) plus the columns
  ``__rollout_n__`` (E3 Alg. 1 budgets, sum = B * rollout.n) and ``__temperature__`` (read by E3AgentLoopWorker;
  rollout workers never see the driver's config). The temperature column is float64, so the rollout samples at
  exactly the Python float the training passes divide the logits by. Both are checked on the driver before the
  batch is sent (``check_decisions``): a worker failing on them would leave verl's replay buffer waiting.
- ``_add_prompts_to_generate`` (verl's refill, ``trainer.v1.sampler.sync_refill_failed_groups``): a prompt whose
  rollouts all failed is evicted by verl's replay buffer and replaced by fresh prompts. The replacements share the
  budget the evicted prompts held (E3 Alg. 1 over the replacements, total = the freed sum_i n_i), so the step still
  spends B * rollout.n; the evicted prompt gets no difficulty record (a failed request is not a wrong answer), the
  replacements are recorded like any prompt. A group that kept some rollouts is trained and recorded on those.
- ``_compute_old_log_prob``: H_t for the scheduler (E3 Eq. 4) is the token mean of verl's per-token ``entropy`` field
  over the response tokens of every real rollout of the step (verl's padding rows excluded), computed on the driver
  whatever ``actor.loss_agg_mode`` is (verl's ``actor/entropy`` follows the loss aggregation, so under
  ``seq-mean-token-sum`` it is a per-sequence sum). One number for the whole batch: every rank samples with one tau.
- ``_compute_advantage``: after verl's pass (KL-in-reward, rollout correction), the GRPO advantages are recomputed
  over the unequal groups with ``e3.advantage`` (singleton -> 0), grouped by uid as verl does (a prompt dispatched
  twice in a step is two groups; its difficulty record is one, per ``extra_info.index``), divided by the group std
  unless ``algorithm.norm_adv_by_std_in_grpo=false`` (Dr. GRPO), times PREPO relative-entropy weights when on.
  Correctness (difficulty, E3's length bias) is the raw ``rm_scores``; under ``algorithm.use_kl_in_reward`` the KL
  term (``token_level_rewards`` - ``rm_scores``) is added after the length bias. Then ``observe`` updates
  difficulty and temperature, and the step logs what it trained beside what it planned (``rollout/n_trained_*``).
- ``step``: the controller's metrics join verl's (same names as the local engine); epoch end ranks difficulty.
- ``_save_checkpoint`` / ``_load_checkpoint``: ``global_step_N/e3_controller.pt`` written atomically before verl
  writes its ``latest_checkpointed_iteration.txt``; restored on resume. With ``trainer.default_hdfs_dir`` set, the
  file is also copied to ``<default_hdfs_dir>/global_step_N/`` with verl's ``hdfs_io`` (where verl's Megatron
  checkpoint manager uploads the actor; its FSDP one ignores the setting), so a remote copy of a checkpoint carries
  the controller state too.

The constructor first checks the verl internals all of this relies on (``e3.engines.verl.internals``). Refused in
``check_supported`` (called by ``launch.preflight`` and by the constructor, before any worker): a trainer mode E3
does not run in (``check_e3_trainer_mode``: verl's separate_async; verl's own colocate_async with an ``e3:`` section),
e3 keys that contradict the verl key they follow (``VERL_SOURCES``),
``trainer.v1.<mode>.parameter_sync_step`` != 1, fused kernels in colocate_async (one tau per batch there),
``rollout_correction.bypass_mode`` with the scheduler or the PREPO
weights, an ``hdfs://`` ``default_hdfs_dir`` without an ``hdfs`` client, estimators other than GRPO, ``rollout.n``
outside the allocation bounds, and the online curriculum.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from numbers import Number

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict

from e3.allocation.registry import resolve_policy
from e3.schema import E3Config
from e3.controller import E3Controller
from e3.engines.verl.rollout import ROLLOUT_N_KEY, TEMPERATURE_KEY
from e3.engines.verl.internals import check_verl_internals
from e3.engines.verl.rollouts import (broadcast_to_tokens, final_sessions, response_token_mean, row_lengths,
                                      row_means, row_sums, scatter_to_rows, split_key)
from e3.engines.verl.validation import validation_metrics
from e3.io import atomic_path
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import hdfs_io
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import collate_fn

logger = logging.getLogger(__name__)

TRAINER_NAME = "e3"
ASYNC_TRAINER_NAME = "e3_colocate_async"  # e3.engines.verl.trainer_async.E3ColocateAsyncTrainer
# E3's registry names -> the verl mode each runs (its ``trainer_mode``, what verl branches on)
E3_TRAINERS = {TRAINER_NAME: "sync", ASYNC_TRAINER_NAME: "colocate_async"}
CONTROLLER_FILE = "e3_controller.pt"
STATE_FORMAT = 2  # 2: the offline curriculum's state inside the controller's


# e3 keys whose value verl's own key decides: (e3 section, key) -> the verl key (one source of truth each)
VERL_SOURCES = {("temperature", "init_temperature"): "actor_rollout_ref.rollout.temperature",
                ("advantage", "norm_by_std"): "algorithm.norm_adv_by_std_in_grpo"}


def e3_config_from(config) -> E3Config:
    """The validated ``e3:`` section of a composed verl config (absent section -> paper defaults).

    tau_0 (``e3.temperature.init_temperature``) and Dr. GRPO (``e3.advantage.norm_by_std``) come from verl's
    ``actor_rollout_ref.rollout.temperature`` and ``algorithm.norm_adv_by_std_in_grpo`` when the section leaves
    them out (``recipe/overlay.yaml`` interpolates them); ``check_supported`` refuses a section that contradicts them.
    """
    section = config.get("e3") if hasattr(config, "get") else None
    data = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    data = dict(data or {})
    for (part, key), verl_key in VERL_SOURCES.items():
        value = OmegaConf.select(config, verl_key, default=None)
        if value is not None and (data.get(part) or {}).get(key) is None:
            data[part] = {**(data.get(part) or {}), key: value}
    try:
        return E3Config.from_dict(data)
    except ValueError as err:
        for (part, key), verl_key in VERL_SOURCES.items():
            if f"e3.{part}.{key}" in str(err):
                raise ValueError(f"{err} (on verl it is {verl_key})") from None
        raise


def logits_dtype(config) -> str:
    """The coarsest dtype the training passes divide the logits by tau in (``e3.temperature.representable``).

    verl's FSDP engine computes in ``fsdp_config.mixed_precision.param_dtype`` (bf16 when unset) for the actor and
    the reference policy; other engines are taken as bf16, whose grid is exact in fp16 and fp32 too.
    """
    from verl.trainer.ppo.utils import need_reference_policy
    from verl.utils.torch_dtypes import PrecisionType

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    roles = ["actor"] + (["ref"] if need_reference_policy(config) else [])
    found = []
    for role in roles:
        part = config.actor_rollout_ref.get(role) or {}
        strategy = str(part.get("strategy", None) or config.actor_rollout_ref.actor.get("strategy", "fsdp"))
        if strategy not in ("fsdp", "fsdp2"):
            found.append("bf16")
            continue
        mixed = OmegaConf.select(config, f"actor_rollout_ref.{role}.fsdp_config.mixed_precision", default=None)
        dtype = PrecisionType.to_dtype((mixed or {}).get("param_dtype", "bf16"))
        if dtype not in names:
            raise ValueError(f"actor_rollout_ref.{role}.fsdp_config.mixed_precision.param_dtype={dtype}: "
                             "the e3 trainer supports fp32, fp16 and bf16")
        found.append(names[dtype])
    return next(d for d in ("bf16", "fp16", "fp32") if d in found)


def check_e3_trainer_mode(mode: str, has_e3_section: bool) -> None:
    """Refuse a ``trainer.v1.trainer_mode`` under which E3 would not run, or would run wrongly (``ValueError``).

    verl's own ``colocate_async`` with an ``e3:`` section would train plain GRPO and ignore the section; E3 in that
    trainer is ``e3_colocate_async``. verl's ``separate_async`` (or an ``e3_separate_async``) is refused outright.
    """
    separate = mode in ("separate_async", "e3_separate_async")
    if separate and (has_e3_section or mode.startswith("e3")):
        raise ValueError(
            f"trainer.v1.trainer_mode={mode}: E3 does not run in verl's separate_async trainer. E3 observes once "
            "per rollout batch (one difficulty update, one temperature step, one budget plan per batch), while "
            "separate_async runs trainer.v1.separate_async.parameter_sync_step sub-steps per global step (old-log-"
            "prob pass, advantages and update k times, Decoupled PPO against a saved pi_old) on standalone rollout "
            "replicas fed by a non-naive checkpoint engine. Use trainer.v1.trainer_mode=e3 (verl's sync trainer) or "
            f"{ASYNC_TRAINER_NAME} (verl's colocate_async trainer)")
    if mode == "colocate_async" and has_e3_section:
        raise ValueError(
            "trainer.v1.trainer_mode=colocate_async runs verl's own trainer, which ignores the e3: section (plain "
            f"GRPO, no E3); for E3 in verl's colocate_async trainer set trainer.v1.trainer_mode={ASYNC_TRAINER_NAME}")


def e3_verl_mode(config) -> str:
    """The verl mode (``sync`` / ``colocate_async``) the E3 trainer named by ``trainer.v1.trainer_mode`` runs."""
    mode = str(OmegaConf.select(config, "trainer.v1.trainer_mode", default=TRAINER_NAME))
    check_e3_trainer_mode(mode, has_e3_section=True)
    if mode not in E3_TRAINERS:
        raise ValueError(f"trainer.v1.trainer_mode={mode}: not an E3 trainer (E3 trainers: {', '.join(E3_TRAINERS)})")
    return E3_TRAINERS[mode]


def check_supported(config, cfg: E3Config) -> None:
    """Refuse, before any worker starts, the verl settings this adapter cannot honour (each message names the key)."""
    mode = e3_verl_mode(config)
    estimator = str(config.algorithm.adv_estimator)
    if estimator != "grpo":
        raise ValueError(f"algorithm.adv_estimator={estimator!r}: the e3 trainer computes GRPO advantages over "
                         "unequal groups; set algorithm.adv_estimator=grpo")
    corr = config.algorithm.get("rollout_correction", None)
    bypass = corr is not None and bool(corr.get("bypass_mode", False))
    if cfg.temperature.enable and bypass:
        raise ValueError("algorithm.rollout_correction.bypass_mode=true skips the old-log-prob pass, so verl computes "
                         "no entropy and e3.temperature cannot be scheduled; disable one of them")
    if cfg.weighting.enable and bypass:
        raise ValueError("algorithm.rollout_correction.bypass_mode=true skips the old-log-prob pass, so verl writes "
                         "no `entropy` field and the PREPO weights (e3.weighting) have no input; disable one of them")
    sync_steps = OmegaConf.select(config, f"trainer.v1.{mode}.parameter_sync_step", default=1)
    if sync_steps is not None and int(sync_steps) != 1:
        raise ValueError(f"trainer.v1.{mode}.parameter_sync_step={sync_steps}: verl would run that many sub-steps "
                         "(old-log-prob pass, advantages, update) per global step, each under an already-updated "
                         "policy, so the E3 controller would observe k times per rollout batch (annealing, epochs "
                         "and budgets k times too fast) or step tau on entropies of policies that did not sample; "
                         f"the {config.trainer.v1.trainer_mode} trainer needs parameter_sync_step=1")
    if mode != "sync":
        for key in ("actor_rollout_ref.model.use_fused_kernels", "actor_rollout_ref.actor.use_fused_kernels"):
            if OmegaConf.select(config, key, default=False):
                raise ValueError(f"{key}=true: verl's fused kernels take one temperature per batch (FSDP: 'use_fused_"
                                 "kernels does not support per sample temperature yet'), and in "
                                 f"{ASYNC_TRAINER_NAME} each rollout is trained at the tau it was sampled with "
                                 "(a batch mixes rollouts of several steps); set it to false")
    remote = OmegaConf.select(config, "trainer.default_hdfs_dir", default=None)
    if remote is not None and str(remote).startswith("hdfs://") and shutil.which("hdfs") is None:
        raise ValueError(f"trainer.default_hdfs_dir={remote}: no `hdfs` command on PATH, so the controller state "
                         "(e3_controller.pt) cannot be copied there with verl's hdfs_io; install the Hadoop client, "
                         "use a mounted path, or set trainer.default_hdfs_dir=null")
    filter_groups = config.algorithm.get("filter_groups", None)
    if filter_groups is not None and filter_groups.get("enable", False):
        raise ValueError("algorithm.filter_groups.enable=true (DAPO dynamic sampling) cannot run with the e3 trainer: "
                         "verl's replay buffer evicts zero-variance groups before the trainer sees them, so a step's "
                         "sum of n_i depends on how many groups were dropped and their rewards never reach e3's "
                         "difficulty records (solved and hopeless prompts would stay unranked, i.e. look hardest); "
                         "set it to false (to spend fewer rollouts on zero-variance groups, use "
                         "e3.allocation.policy=informative or knapsack)")
    for (part, key), verl_key in VERL_SOURCES.items():
        ours, theirs = getattr(getattr(cfg, part), key), OmegaConf.select(config, verl_key, default=None)
        if theirs is not None and ours != theirs:
            raise ValueError(f"e3.{part}.{key}={ours} contradicts {verl_key}={theirs}: on verl the e3 trainer takes "
                             f"it from {verl_key} (verl's trainer and rollout read that key); set only that one")
    n, alloc = int(config.actor_rollout_ref.rollout.n), cfg.allocation
    resolve_policy(alloc.policy)  # a bad e3.allocation.policy fails in the driver's preflight, before Ray starts
    if alloc.enable and not alloc.n_low <= n <= alloc.n_high:
        raise ValueError(f"actor_rollout_ref.rollout.n={n} must lie in [e3.allocation.n_low, n_high] = "
                         f"[{alloc.n_low}, {alloc.n_high}]: the budgets start at n and move within those bounds")
    if cfg.curriculum.enable and cfg.curriculum.mode != "offline":
        raise ValueError("e3.curriculum.mode=online is not available on the verl engine (it needs a prompt forward "
                         "pass on the actor workers before each rollout); score the data once with "
                         "data/score_perplexity.py and set e3.curriculum.mode=offline")


def dataset_prompt_fields(dataset, files, with_perplexity: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``extra_info.index`` (unique per row) and optionally ``extra_info.perplexity`` of a verl RLHFDataset."""
    frame = getattr(dataset, "dataframe", None)
    if frame is None or "extra_info" not in frame.column_names:
        raise ValueError(f"data.train_files={list(files)}: rows need extra_info.index (E3 tracks difficulty per "
                         "prompt); write the data with data/prepare_train.py")
    indices, ppl, seen = [], [], {}
    for row, extra in enumerate(frame["extra_info"]):
        index = (extra or {}).get("index")
        if isinstance(index, bool) or not isinstance(index, Number) or int(index) != index:
            raise ValueError(f"data.train_files={list(files)} row {row} field extra_info.index: expected an integer, "
                             f"got {index!r}")
        index = int(index)
        if index in seen:
            raise ValueError(f"data.train_files={list(files)} row {row} field extra_info.index: {index} repeats row "
                             f"{seen[index]}; E3 tracks difficulty per index, so indices must be unique")
        seen[index] = row
        indices.append(index)
        if with_perplexity:
            value = (extra or {}).get("perplexity")
            if not isinstance(value, Number) or not math.isfinite(value):
                raise ValueError(f"data.train_files={list(files)} row {row} field extra_info.perplexity: missing or "
                                 "not finite; the offline PREPO curriculum needs data/score_perplexity.py first")
            ppl.append(float(value))
    return np.asarray(indices, dtype=np.int64), (np.asarray(ppl) if with_perplexity else None)


def scalar_metrics(metrics: dict) -> dict:
    """What verl's trackers (console, wandb, tensorboard, mlflow, file) accept: scalars only.

    The per-prompt budget lists ``rollout/n_hist`` (planned) and ``rollout/n_trained_hist`` (trained) become counts
    ``rollout/n_count/<n>`` and ``rollout/n_trained_count/<n>`` for every n between the smallest and largest value
    of the step (any ``rollout/*_hist`` list alike, e.g. colocate_async's ``rollout/tau_lag_hist``); other
    non-scalars are dropped.
    """
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = int(value)
        elif isinstance(value, (Number, np.number)):
            out[key] = float(value) if isinstance(value, (float, np.floating)) else int(value)
        elif key.startswith("rollout/") and key.endswith("_hist") and len(value):
            counts, name = np.bincount(np.asarray(value, dtype=np.int64)), key[:-len("_hist")] + "_count"
            out.update({f"{name}/{n}": int(counts[n]) for n in range(min(value), max(value) + 1)})
    return out


def budget_metrics(budgets) -> dict:
    """The per-step budget metrics (same names as ``RolloutAllocator.metrics``) of the prompts a step dispatched."""
    n = np.asarray(list(budgets), dtype=np.int64)
    out = {"rollout/n_total": int(n.sum()), "rollout/n_hist": n.tolist()}
    if n.size:
        out.update({"rollout/n_alloc_min": int(n.min()), "rollout/n_alloc_max": int(n.max()),
                    "rollout/n_alloc_std": float(n.std())})
    return out


def trained_budget_metrics(planned: dict[str, int], trained_uids) -> dict:
    """What a step trained beside what it planned: ``rollout/n_trained_total`` (rollouts trained),
    ``rollout/n_trained_hist`` (per dispatched prompt, in dispatch order) and ``rollout/n_failed`` (planned - trained,
    the rollouts whose sessions failed). ``planned``: uid -> n_i of the prompts still in the step."""
    counts: dict[str, int] = {}
    for uid in trained_uids:
        counts[uid] = counts.get(uid, 0) + 1
    trained = [counts.get(uid, 0) for uid in planned]
    return {"rollout/n_trained_total": int(sum(counts.values())), "rollout/n_trained_hist": trained,
            "rollout/n_failed": int(sum(max(n - counts.get(uid, 0), 0) for uid, n in planned.items()))}


def check_decisions(uids, budgets, temperatures) -> None:
    """Refuse, on the driver and before the batch is sent, a budget or tau the agent loop would fail on.

    A rollout worker that raises on its prompt does so before verl marks the group started, so verl's replay buffer
    would wait for that group forever.
    """
    for uid, n, tau in zip(uids, budgets, temperatures):
        if not 1 <= int(n):
            raise ValueError(f"E3 planned {ROLLOUT_N_KEY}={n} for prompt uid={uid}: a budget must be >= 1")
        if not 0.0 < float(tau) < float("inf"):
            raise ValueError(f"E3 planned {TEMPERATURE_KEY}={tau!r} for prompt uid={uid}: must be finite and > 0")


def save_controller_state(folder: str, state: dict) -> str:
    """Write ``folder/e3_controller.pt`` atomically (``e3.io.atomic_path``); returns the path."""
    path = os.path.join(folder, CONTROLLER_FILE)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def copy_to_remote(path: str, remote_folder: str) -> str:
    """Copy a written controller file into ``remote_folder`` (``hdfs://`` or a mounted path) with verl's hdfs_io,
    as verl's Megatron checkpoint manager uploads the actor; a failed copy raises (the backup would be incomplete)."""
    hdfs_io.makedirs(remote_folder, exist_ok=True)
    target = os.path.join(remote_folder, os.path.basename(path))
    if hdfs_io.copy(path, target) is False:
        raise RuntimeError(f"trainer.default_hdfs_dir: copying {path} to {target} failed")
    return target


def load_controller_state(folder: str) -> dict:
    path = os.path.join(folder, CONTROLLER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resuming from {folder}, but {CONTROLLER_FILE} is missing there: the checkpoint was "
                                "not written by the e3 trainer, so the difficulty ranking, rollout budgets and "
                                "temperature cannot be restored. Start a fresh run (trainer.resume_mode=disable) "
                                "or resume from an e3 checkpoint")
    state = torch.load(path, weights_only=False)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: unknown controller state format {state.get('format')!r}")
    return state


class E3TrainerMixin:
    """The E3 decisions and observations on verl's v1 ``PPOTrainer`` hooks (see the module docstring), for a verl
    trainer class after it in the bases: ``E3Trainer`` (verl's sync trainer) and
    ``e3.engines.verl.trainer_async.E3ColocateAsyncTrainer`` (its colocate_async trainer), which overrides the
    extension points ``_pop_evicted``, ``_scheduler_entropy``, ``_trained_budgets`` and ``_trained_metrics``."""

    def __init__(self, config):
        check_verl_internals()
        self.e3_config = e3_config_from(config)
        check_supported(config, self.e3_config)
        self.tau_dtype = logits_dtype(config)
        self.controller: E3Controller | None = None
        self._row_of: dict[int, int] = {}
        self._step_entropy = float("nan")
        self._e3_metrics: dict = {}
        self._budgets: dict[str, int] = {}  # uid -> n_i of the prompts dispatched in this step (refills included)
        self._refilled = 0
        self._refill_total: int | None = None
        super().__init__(config)

    # ------------------------------------------------------------------ setup
    def _init_dataloader(self):
        super()._init_dataloader()
        cfg = self.e3_config
        files = self.config.data.train_files
        files = [files] if isinstance(files, str) else list(files)
        indices, ppl = dataset_prompt_fields(self.train_dataset, files, cfg.curriculum.enable)
        self.controller = E3Controller(cfg, n=int(self.config.actor_rollout_ref.rollout.n),
                                       vocab_size=len(self.tokenizer), max_steps=int(self.total_training_steps),
                                       dataset_indices=indices, batch_size=int(self.config.data.train_batch_size),
                                       tau_dtype=self.tau_dtype)
        if self.controller.paces_offline:
            self.controller.pace_offline(indices, ppl, seed=cfg.allocation.seed)
            self._row_of = {int(i): row for row, i in enumerate(indices.tolist())}

    # ------------------------------------------------------------------ decisions
    def on_step_begin(self):
        super().on_step_begin()
        self.config.actor_rollout_ref.rollout.temperature = float(self.controller.temperature)

    def prepare_step(self) -> dict:
        self._budgets, self._refilled = {}, 0
        return super().prepare_step()

    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        if not self.controller.paces_offline:
            batch = super()._next_train_batch(num_prompts)
        else:
            batch = self._paced_batch(num_prompts or int(self.config.data.train_batch_size))
        indices = np.asarray([int(i) for i in batch["index"]], dtype=np.int64)
        total = self._refill_total or len(indices) * int(self.config.actor_rollout_ref.rollout.n)
        plan = self.controller.plan(indices, total=total)
        uids = [str(u) for u in batch["uid"]]
        taus = [float(plan.temperature)] * len(indices)
        check_decisions(uids, plan.n_per_prompt.tolist(), taus)
        batch[ROLLOUT_N_KEY] = torch.as_tensor(plan.n_per_prompt, dtype=torch.int64)
        # float64: the worker's float() gives back exactly the tau the training passes use (float32 would not)
        batch[TEMPERATURE_KEY] = torch.tensor(taus, dtype=torch.float64)
        self._budgets.update(zip(uids, plan.n_per_prompt.tolist()))
        return batch

    def _add_prompts_to_generate(self, num_prompts: int) -> int:
        """verl's refill (failed groups; DAPO's filter; colocate_async: stale groups): replacements inherit the
        budget of the evicted prompts.

        The evicted prompts are the dispatched prompts (sync: this step's; colocate_async: any still in flight) whose
        keys verl's replay buffer has cleared from TransferQueue (``_pop_evicted``). When their freed budget fits
        ``num_prompts`` replacements within the current bounds [n_min, n_max], E3 Alg. 1 splits it over them (one
        replacement gets exactly the evicted prompt's n_i); otherwise (e.g. DAPO asking for twice the evicted count,
        or colocate_async's warm-up, which evicts nothing) the replacements are planned as a fresh batch.
        """
        live = (tq.kv_list("train") or {}).get("train", {})
        freed = sum(self._pop_evicted(live))
        schedule = self.controller.allocator.schedule
        fits = num_prompts * schedule.n_min <= freed <= num_prompts * schedule.n_max
        self._refill_total = freed if fits else None
        self._refilled += int(num_prompts)
        try:
            return super()._add_prompts_to_generate(num_prompts)
        finally:
            self._refill_total = None

    def _pop_evicted(self, live) -> list[int]:
        """Forget the dispatched prompts whose keys verl has cleared from TransferQueue; their budgets n_i."""
        return [self._budgets.pop(uid) for uid in [u for u in self._budgets if u not in live]]

    def _paced_batch(self, num_prompts: int) -> TensorDict:
        """PREPO offline curriculum: the prompts of the paced window (dataset scored once, sorted by perplexity)."""
        chosen = self.controller.paced_prompts(num_prompts)
        rows = [self.train_dataset[self._row_of[int(i)]] for i in chosen.tolist()]
        batch_dict = collate_fn(rows)
        batch_dict["uid"] = np.array([str(uuid.uuid4()) for _ in rows], dtype=object)
        batch = tu.get_tensordict(batch_dict)
        tu.assign_non_tensor_data(batch, "global_steps", self.global_steps)
        return batch

    # ------------------------------------------------------------------ observations
    def _compute_old_log_prob(self, batch, metrics: dict):
        batch = super()._compute_old_log_prob(batch, metrics)
        corr = self.config.algorithm.get("rollout_correction", None)
        if corr is not None and corr.get("bypass_mode", False):  # no old-log-prob pass: no entropy field
            self._step_entropy = float("nan")
            return batch
        self._step_entropy = self._scheduler_entropy(batch)
        return batch

    def _scheduler_entropy(self, batch) -> float:
        """H_t for the scheduler: the token mean of the ``entropy`` field over the step's real rollouts."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["entropy", "response_mask"])
        return response_token_mean(data["entropy"], data["response_mask"], batch.tags)

    def _compute_advantage(self, batch, metrics: dict):
        batch = super()._compute_advantage(batch, metrics)
        kl_in_reward = bool(self.config.algorithm.use_kl_in_reward)
        fields = ["index", "rm_scores", "response_mask"]
        if self.e3_config.weighting.enable:
            fields.append("entropy")
        if kl_in_reward:
            fields.append("token_level_rewards")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        sessions = final_sessions(batch.keys, batch.tags)
        rows = sessions.final_rows
        uids = [split_key(batch.keys[r])[0] for r in rows.tolist()]  # verl's GRPO groups: one per dispatched prompt
        index_col = list(data["index"])
        indices = np.asarray([int(index_col[r]) for r in rows.tolist()], dtype=np.int64)
        mask = data["response_mask"]
        scores = row_sums(data["rm_scores"])[rows]  # the raw score: correctness, difficulty, length bias
        kl_terms = row_sums(data["token_level_rewards"])[rows] - scores if kl_in_reward else None
        lengths = row_lengths(mask)[rows]
        entropies = row_means(data["entropy"], mask)[rows] if self.e3_config.weighting.enable else None

        adv = self.controller.advantages(scores, indices, entropies=entropies, lengths=lengths, group_ids=uids,
                                         kl_terms=kl_terms)
        self._e3_metrics = self.controller.observe(indices, scores, self._step_entropy)
        self._e3_metrics.update(self._trained_metrics(uids))

        per_row = broadcast_to_tokens(scatter_to_rows(adv, sessions), mask)
        out = TensorDict({"advantages": per_row, "returns": per_row.clone()}, batch_size=len(batch))
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)

    def _trained_metrics(self, uids: list[str]) -> dict:
        """The step's budgets as dispatched and as trained; ``uids``: the uid of each trained rollout."""
        out = {}
        if self._refilled:  # the allocator's last plan is the refill's; report the whole step's budgets
            out.update(budget_metrics(self._budgets.values()))
        out.update(trained_budget_metrics(self._trained_budgets(), uids))
        out["rollout/refilled_prompts"] = self._refilled
        return out

    def _trained_budgets(self) -> dict[str, int]:
        """uid -> n_i of the groups the step trains (sync: the step's dispatched prompts still in the step)."""
        return self._budgets

    def step(self, metrics: dict, timing_raw: dict):
        batch = super().step(metrics, timing_raw)
        metrics.update(scalar_metrics(self._e3_metrics))
        if self.steps_per_epoch > 0 and self.global_steps % self.steps_per_epoch == 0:
            self.controller.end_epoch()  # before _save_checkpoint, so a checkpoint holds the new ranking
        return batch

    def _val_metrics_update(self, data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                            expected_acc_counts=None):
        out = super()._val_metrics_update(data_sources, sample_uids, reward_extra_infos_dict, sample_turns,
                                          expected_acc_counts=expected_acc_counts)
        out.update(validation_metrics(self.config, data_sources, sample_uids, reward_extra_infos_dict))
        return out

    # ------------------------------------------------------------------ checkpoints
    def e3_state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "global_step": int(self.global_steps),
                "controller": self.controller.state_dict(),
                "e3_config": self.e3_config.to_dict()}

    def e3_load_state_dict(self, state: dict) -> None:
        if state["e3_config"] != self.e3_config.to_dict():
            logger.warning("e3 config differs from the checkpoint's; keeping the new settings, restoring the state")
        self.controller.load_state_dict(state["controller"])

    def _save_checkpoint(self):
        step_dir = f"global_step_{self.global_steps}"
        path = save_controller_state(os.path.join(self.config.trainer.default_local_dir, step_dir),
                                     self.e3_state_dict())
        remote_root = self.config.trainer.get("default_hdfs_dir", None)
        if remote_root is not None:
            copy_to_remote(path, os.path.join(str(remote_root), step_dir))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0:
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = str(self.config.trainer.resume_from_path)
        else:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        if not os.path.isabs(folder):
            folder = os.path.join(os.getcwd(), folder)
        state = load_controller_state(folder)
        if int(state["global_step"]) != int(self.global_steps):
            raise ValueError(f"{folder}/{CONTROLLER_FILE} is from step {state['global_step']}, "
                             f"but verl resumes at step {self.global_steps}")
        self.e3_load_state_dict(state)
        logger.info("e3 controller restored from %s (step %d, tau=%.4f)", folder, self.controller.step,
                    self.controller.temperature)


def verl_mode_property(name: str) -> property:
    """``trainer_mode`` for the E3 trainer registered as ``name``: verl's ``PPOTrainer.__init__`` sets it from
    ``trainer.v1.trainer_mode`` (the registry name, which only selects the class) and branches on what it reads back,
    so it reads back the verl mode the class runs (``E3_TRAINERS``)."""
    mode = E3_TRAINERS[name]

    def get(self) -> str:
        return mode

    def set(self, value: str) -> None:
        if value not in (name, mode):
            raise ValueError(f"the {name} trainer runs verl's {mode} mode; got trainer.v1.trainer_mode={value!r}")

    return property(get, set)


@register_trainer(TRAINER_NAME)
class E3Trainer(E3TrainerMixin, PPOTrainerSync):
    """verl's sync trainer driven by ``e3.controller.E3Controller`` (see the module docstring)."""

    # verl branches on ``trainer_mode == "sync"`` (replay buffer, refill, TransferQueue checkpoints); every step is a
    # verl sync step
    trainer_mode = verl_mode_property(TRAINER_NAME)
