"""Contract: E3 in verl 0.9.1's colocate_async trainer (``trainer.v1.trainer_mode=e3_colocate_async``).

Without Ray: the class verl's registry gives for the name and the mode it reports, the refusals before any worker
starts, the runtime guard of the async internals. With Ray + TransferQueue: the wrapper of the worker-group calls on
a real batch (verl's own worker-side conversion decides which temperature the worker sees), then one run of verl's
real ``PPOTrainer.fit`` loop in colocate_async (6 steps, 4 prompts x n=4, half a warm-up batch, so every step trains
two groups dispatched the step before and two of its own; an E3 epoch ends after step 4; at step 5 every request
of the prompt with the largest budget fails, so verl evicts and refills it; checkpoints every 2 steps) and a run
resumed from its step-2 checkpoint with one restored prompt still pending. See ``verl_harness`` for what is real.
What this cannot see: partial rollouts (the harness's agent loop finishes every request at dispatch), the FSDP
engine itself (``TinyActorGroup`` divides each row by the tau the worker would see).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from e3.advantage import grpo_advantages  # noqa: E402
from e3.temperature import temperature_update  # noqa: E402

from .verl_harness import ScriptedServer, assemble, compose, spy_trainer_cls  # noqa: E402

B, N, STEPS = 4, 4, 6
MODE = "trainer.v1.trainer_mode=e3_colocate_async"


def async_overrides(workdir: Path, ckpt: str, *extra: str) -> list[str]:
    return [f"actor_rollout_ref.model.path={workdir / 'sharp_model'}", MODE,
            "trainer.v1.colocate_async.num_warmup_batches=0.5", "e3.temperature.warmup_steps=1",
            f"trainer.total_training_steps={STEPS}", "trainer.save_freq=2", "trainer.test_freq=-1",
            "trainer.val_before_train=false", "trainer.logger=[console]",
            f"trainer.default_local_dir={workdir / ckpt}",
            # the tiny model computes in fp32 (TinyActorGroup): tau on the fp32 grid, so every scheduler step moves it
            "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32", *extra]


# ------------------------------------------------------------------ without Ray
def test_verls_registry_gives_the_e3_async_trainer_which_runs_verls_colocate_async_mode(workdir):
    from e3.engines.verl.trainer import E3Trainer, E3TrainerMixin
    from e3.engines.verl.trainer_async import E3ColocateAsyncTrainer
    from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync

    cls = get_trainer_cls("e3_colocate_async")
    assert cls is E3ColocateAsyncTrainer and issubclass(cls, PPOTrainerColocateAsync)
    assert issubclass(cls, E3TrainerMixin) and issubclass(E3Trainer, E3TrainerMixin)
    trainer = cls(compose(workdir, MODE))
    # verl reads the mode back for every branch: the async replay buffer, its config section
    assert trainer.trainer_mode == "colocate_async" and trainer.parameter_sync_step == 1
    assert type(trainer.replay_buffer) is ReplayBufferAsync
    assert trainer.replay_buffer.refill_fn.__func__ is E3ColocateAsyncTrainer._add_prompts_to_generate
    with pytest.raises(ValueError, match="runs verl's colocate_async mode; got trainer.v1.trainer_mode='sync'"):
        trainer.trainer_mode = "sync"
    assert E3Trainer(compose(workdir)).trainer_mode == "sync"


def test_modes_e3_does_not_run_in_are_refused_before_any_worker(workdir):
    from e3.engines.verl.configs import ConfigError
    from e3.engines.verl.launch import check_trainer_mode
    from e3.engines.verl.trainer import check_supported, e3_config_from

    for mode in ("separate_async", "e3_separate_async"):
        cfg = compose(workdir, f"trainer.v1.trainer_mode={mode}")
        for check in (check_trainer_mode, lambda c: check_supported(c, e3_config_from(c))):
            with pytest.raises(ValueError, match=rf"trainer_mode={mode}: E3 does not run in verl's separate_async "
                                                 r"trainer\. E3 observes once per rollout batch .*"
                                                 r"parameter_sync_step sub-steps .* non-naive checkpoint engine"):
                check(cfg)
    stock = compose(workdir, "trainer.v1.trainer_mode=colocate_async")
    with pytest.raises(ConfigError, match=r"colocate_async runs verl's own trainer, which ignores the e3: section .*"
                                          r"set trainer.v1.trainer_mode=e3_colocate_async"):
        check_trainer_mode(stock)
    assert check_trainer_mode(compose(workdir, "trainer.v1.trainer_mode=colocate_async", "~e3")) == "colocate_async"
    assert check_trainer_mode(compose(workdir, MODE)) == "e3_colocate_async"


def test_async_settings_are_checked_in_their_own_config_section(workdir):
    from e3.engines.verl.trainer import check_supported, e3_config_from

    def check(*overrides):
        cfg = compose(workdir, *overrides)
        check_supported(cfg, e3_config_from(cfg))

    check(MODE)
    with pytest.raises(ValueError, match=r"trainer\.v1\.colocate_async\.parameter_sync_step=2: .* the "
                                         r"e3_colocate_async trainer needs parameter_sync_step=1"):
        check(MODE, "+trainer.v1.colocate_async.parameter_sync_step=2")
    check("+trainer.v1.colocate_async.parameter_sync_step=2")  # the sync trainer reads trainer.v1.sync
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.model\.use_fused_kernels=true: verl's fused kernels "
                                         r"take one temperature per batch .* set it to false"):
        check(MODE, "actor_rollout_ref.model.use_fused_kernels=true")
    check("actor_rollout_ref.model.use_fused_kernels=true")  # one tau per batch in sync: fine


@pytest.mark.parametrize("target,replacement,symbol", [
    ("verl.trainer.ppo.v1.trainer_base.PPOTrainer._update_actor", lambda self, batch, metrics: batch,
     "PPOTrainer._update_actor"),
    ("verl.trainer.ppo.v1.trainer_colocate_async.PPOTrainerColocateAsync.on_train_begin", lambda self: None,
     "PPOTrainerColocateAsync.on_train_begin"),
    ("verl.utils.transferqueue_utils._async_meta_to_realdata", lambda meta: None, "_async_meta_to_realdata"),
])
def test_the_async_guard_names_a_changed_internal(monkeypatch, target, replacement, symbol):
    import importlib

    from e3.engines.verl.internals import VerlInternalsChanged, check_colocate_async

    check_colocate_async()
    module, _, attr = target.rpartition(".")
    try:
        owner = importlib.import_module(module)
    except ModuleNotFoundError:
        module, _, cls = module.rpartition(".")
        owner = getattr(importlib.import_module(module), cls)
    monkeypatch.setattr(owner, attr, replacement)
    with pytest.raises(VerlInternalsChanged, match=r"verl==0\.9\.1") as err:
        check_colocate_async()
    assert symbol in str(err.value)


def test_the_async_trainer_runs_its_guard_first(monkeypatch):
    from e3.engines.verl import trainer_async
    from e3.engines.verl.internals import VerlInternalsChanged

    def refuse():
        raise VerlInternalsChanged("stop")

    monkeypatch.setattr(trainer_async, "check_colocate_async", refuse)
    with pytest.raises(VerlInternalsChanged, match="stop"):
        trainer_async.E3ColocateAsyncTrainer(config=None)


@pytest.mark.slow
def test_the_task_runner_registers_the_async_trainer_in_a_fresh_process(tmp_path):
    """verl resolves the name in the task runner's own process, where nothing registered it before."""
    code = textwrap.dedent("""
        import sys
        import transfer_queue as tq
        from hydra import compose, initialize_config_dir
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, PPOTrainer
        from e3.engines.verl.configs import CONFIG_DIR

        assert "e3_colocate_async" not in TRAINER_REGISTRY
        tq.init = lambda conf=None: None
        tq.close = lambda: None

        def stop(self):
            raise SystemExit(f"constructed {type(self).__qualname__} trainer_mode={self.trainer_mode}")

        PPOTrainer.init = stop
        from e3.engines.verl.runner import E3TaskRunner

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose(config_name="e3_r1_1.5b", overrides=["actor_rollout_ref.model.path=unused",
                                                              "trainer.v1.trainer_mode=e3_colocate_async"])
        E3TaskRunner().run(cfg)
    """)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "constructed E3ColocateAsyncTrainer trainer_mode=colocate_async" in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------ the worker-group wrapper on a real batch
def test_the_wrapped_call_hands_the_worker_each_rows_own_tau(cluster, monkeypatch):
    """verl's worker turns the KVBatchMeta into a TensorDict (``_async_meta_to_realdata``): a batch-wide
    ``extra_info["temperature"]`` replaces the per-row field there, unless the wrapper dropped it."""
    import torch
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    from e3.engines.verl import trainer_async
    from verl.utils import transferqueue_utils

    monkeypatch.setattr(transferqueue_utils, "TQ_INITIALIZED", True)  # this process's TransferQueue (the fixture)
    keys = ["wrapper_0_0", "wrapper_1_0", "wrapper_2_0"]
    taus = torch.tensor([1.0, 0.75, 1.25], dtype=torch.float32)
    tq.kv_batch_put(keys=keys, partition_id="train", tags=[{}] * 3,
                    fields=TensorDict({"temperature": taus, "input_ids": torch.arange(6).view(3, 2)}, batch_size=3))
    seen = []

    def worker_call(batch):  # what the worker gets for this batch
        seen.append(transferqueue_utils._run_async_in_temp_loop(transferqueue_utils._async_meta_to_realdata, batch))
        return batch

    def batch(**extra):
        return KVBatchMeta(keys=keys, tags=[{}] * 3, partition_id="train",
                           extra_info={"temperature": 0.5, "calculate_entropy": True, **extra})

    worker_call(batch())
    assert seen[-1]["temperature"] == 0.5  # unwrapped: verl's scalar wins over the rows' own tau

    class Group:  # verl binds worker-group calls as instance attributes; so does this stand-in
        def __init__(self):
            self.compute_log_prob = self.update_actor = worker_call

    class Host:
        actor_rollout_wg, ref_policy_wg = Group(), None  # no reference policy

    host = Host()
    trainer_async.E3ColocateAsyncTrainer.use_per_sample_temperature(host)
    trainer_async.E3ColocateAsyncTrainer.use_per_sample_temperature(host)  # idempotent
    wrapped = host.actor_rollout_wg.compute_log_prob
    assert wrapped.__wrapped__ is worker_call
    sent = batch()
    wrapped(sent)
    got = seen[-1]
    assert isinstance(got["temperature"], torch.Tensor) and torch.equal(got["temperature"], taus)
    assert got["calculate_entropy"] is True and "temperature" not in sent.extra_info

    tq.kv_batch_put(keys=["bare_0_0"], partition_id="train", tags=[{}],
                    fields=TensorDict({"input_ids": torch.arange(2).view(1, 2)}, batch_size=1))
    no_field = KVBatchMeta(keys=["bare_0_0"], tags=[{}], partition_id="train", extra_info={"temperature": 0.5})
    with pytest.raises(ValueError, match=r"actor_rollout_wg.update_actor: the batch has no usable per-sample "
                                         r"`temperature` field \(reading it failed .*\)\. e3_colocate_async trains"):
        host.actor_rollout_wg.update_actor(no_field)
    listed = KVBatchMeta(keys=keys, tags=[{}] * 3, partition_id="train", fields=["input_ids"])
    with pytest.raises(ValueError, match=r"its fields are \['input_ids'\]"):
        wrapped(listed)
    tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({"temperature": torch.zeros(3)}, batch_size=3))
    with pytest.raises(ValueError, match=r"it holds \[0\.0, 0\.0, 0\.0\], not finite temperatures > 0"):
        wrapped(batch())
    tq.kv_clear(keys=keys + ["bare_0_0"], partition_id="train")


# ------------------------------------------------------------------ verl's real loop in colocate_async
class FailLargest:
    """On weights version 4 (step 5) every request of the prompt with the largest budget of step 5's dispatch
    fails: verl evicts the group and refills one prompt."""

    def __init__(self):
        self.plans: list[dict] = []
        self.victim: int | None = None

    def __call__(self, k: int, version: int) -> bool:
        if version != 4 or k >= 100:
            return False
        if self.victim is None:
            plan = self.plans[-1]
            self.victim = max(zip(plan["n"], plan["index"]))[1]
        return k == self.victim


@pytest.fixture(scope="module")
def run(cluster, workdir):
    from transformers import AutoTokenizer

    from e3.engines.verl.trainer_async import E3ColocateAsyncTrainer

    fail = FailLargest()
    server = ScriptedServer(AutoTokenizer.from_pretrained(workdir / "sharp_model"), fail=fail)
    trainer = spy_trainer_cls(E3ColocateAsyncTrainer)(compose(workdir, *async_overrides(workdir, "ckpt_async")),
                                                      server)
    fail.plans = trainer.plans
    agent_loop = assemble(trainer, workdir / "sharp_model", server)
    trainer.fit(agent_loop)
    listed = (tq.kv_list("train") or {}).get("train", {})
    tq.kv_clear(keys=list(listed), partition_id="train")  # what is still in flight (a new run starts clean)
    return {"trainer": trainer, "server": server, "fail": fail}


def uid_of(key: str) -> str:
    return key.rsplit("_", 2)[0]


def dispatches(trainer) -> dict[str, tuple[int, float, int]]:
    """uid -> (n_i, tau, dispatch step) from the recorded plans."""
    return {uid: (n, tau, p["step"]) for p in trainer.plans for uid, n, tau in zip(p["uid"], p["n"], p["tau"])}


def trained(trainer, step: int) -> dict:
    """The step's trained batch as the advantage step saw it, padding rows dropped."""
    rec = next(r for r in trainer.adv_rows if r["step"] == step)
    rows = [i for i, pad in enumerate(rec["padding"]) if not pad]
    return {key: [rec[key][i] for i in rows] for key in ("keys", "uid", "index", "score", "adv")}


def latest_tau(trainer, step: int) -> float:
    return [p for p in trainer.plans if p["step"] == step][-1]["tau"][0]


@pytest.mark.slow
def test_every_dispatch_plans_its_budget_and_is_sampled_at_its_tau(run):
    trainer, server, victim = run["trainer"], run["server"], run["fail"].victim
    plans = trainer.plans
    # warm-up (half a batch) and step 1 both dispatch before step 1 trains; step 5 refills the failed prompt
    assert [(p["step"], len(p["index"])) for p in plans] == [(1, 2), (1, 4), (2, 4), (3, 4), (4, 4), (5, 4),
                                                              (5, 1), (6, 4)]
    # epoch 2 (bounds [2, 6]) budgets differ; the evicted group's budget went to its replacement
    step5, refill = plans[5], plans[6]
    victim_n = dict(zip(step5["index"], step5["n"]))[victim]
    assert len(set(step5["n"])) > 1 and victim_n == max(step5["n"]) > N and refill["n"] == [victim_n]
    assert [k for k, _ in server.failed] == [victim] * victim_n
    for p, nxt in zip(plans, plans[1:] + [None]):
        assert sum(p["n"]) == (victim_n if p is refill else len(p["index"]) * N)
        window = server.requests[p["first_request"]:(nxt["first_request"] if nxt else len(server.requests))]
        sampled = Counter()  # a prompt can be dispatched twice in one batch (across the dataloader's epoch end)
        for i, n in zip(p["index"], p["n"]):
            sampled[i] += 0 if p is step5 and i == victim else n
        assert Counter(k for k, _ in window) == sampled  # the server records the requests it answered
        assert {tau for _, tau in window} == {p["tau"][0]} and len(set(p["tau"])) == 1
    metrics = trainer.step_metrics[4]
    assert metrics["rollout/refilled_prompts"] == 1 and metrics["rollout/n_total"] == B * N  # what step 5 spent
    assert metrics["training/rollout_failure/evicted_samples"] == 1


@pytest.mark.slow
def test_each_rollout_is_trained_at_the_tau_it_was_sampled_with(run):
    trainer = run["trainer"]
    wg, planned = trainer.actor_rollout_wg, dispatches(trainer)
    assert [name for name, _ in wg.calls] == ["compute_log_prob", "update_actor"] * STEPS
    assert {tau for _, tau in wg.calls} == {None}  # verl's batch-wide temperature never reached a worker
    mixed = 0
    padded = 0
    for name, keys, taus in wg.row_taus:
        real = {k: t for k, t in zip(keys, taus) if uid_of(k) in planned}
        assert real == {k: planned[uid_of(k)][1] for k in real}, name
        padding = [t for k, t in zip(keys, taus) if k not in real]  # verl's padding rows copy a real row's fields
        assert set(padding) <= set(real.values())
        padded += bool(padding)
        mixed += len(set(taus)) > 1
    # padding rows appear only when a trained batch mixes dispatches into a size verl pads (timing-dependent);
    # where they appear, they carry a real rollout's tau (checked above)
    assert mixed >= 2  # some steps train rollouts of two different temperatures
    assert len({planned[u][1] for u in planned}) == STEPS - 1  # the scheduler moved tau at every step after step 2
    # colocate_async's own hooks ran around each step: abort before training, resume after the weight update
    assert trainer.checkpoint_manager.events == ["abort", "resume"] * STEPS


@pytest.mark.slow
def test_the_scheduler_steps_once_per_step_on_the_rollouts_at_the_latest_tau(run):
    trainer = run["trainer"]
    vocab = len(trainer.tokenizer)
    old_log_prob = [taus for name, _, taus in trainer.actor_rollout_wg.row_taus if name == "compute_log_prob"]
    subset = 0
    for step, (rec, taus) in enumerate(zip(trainer.entropy_rows, old_log_prob), start=1):
        m = trainer.step_metrics[step - 1]
        real = [not pad for pad in rec["padding"]]
        at = [r and t == latest_tau(trainer, step) for r, t in zip(real, taus)]
        chosen = at if any(at) else real
        subset += any(at) and sum(at) < sum(real)

        def mean(rows):
            num = sum(e * k for ent, mask, r in zip(rec["entropy"], rec["mask"], rows) if r for e, k in zip(ent, mask))
            return num / sum(k for mask, r in zip(rec["mask"], rows) if r for k in mask)

        assert m["rollout/entropy"] == pytest.approx(mean(chosen), rel=1e-9)
        assert m["rollout/entropy_all"] == pytest.approx(mean(real), rel=1e-9)
        assert m["rollout/entropy_rows"] == sum(chosen) and m["rollout/entropy_at_latest_tau"] == int(any(at))
        assert m["step"] == step  # the controller counts training steps
    assert subset == STEPS - 2  # from step 3 on, half of each trained batch was sampled at the latest tau
    # tau of the next dispatch = E3 Eq. 4 on that entropy (step 1 is the scheduler's warm-up)
    exact = {p["step"]: p["exact_tau"] for p in trainer.plans}
    for step in range(2, STEPS):
        m = trainer.step_metrics[step - 1]
        expected = temperature_update(exact[step], m["rollout/entropy"], m["rollout/target_entropy"], vocab)
        assert exact[step + 1] == pytest.approx(min(2.0, max(0.5, expected)), rel=1e-9)


@pytest.mark.slow
def test_a_group_is_recorded_once_when_trained_with_its_lag(run):
    trainer = run["trainer"]
    planned = dispatches(trainer)
    before = dict.fromkeys(trainer.counts[0]["index"], 0)
    lags = Counter()
    for step in range(1, STEPS + 1):
        batch, m = trained(trainer, step), trainer.step_metrics[step - 1]
        uids = [uid_of(k) for k in batch["keys"]]
        after = dict(zip(trainer.counts[step - 1]["index"], trainer.counts[step - 1]["count"]))
        assert {i: after[i] - before[i] for i in after if after[i] != before[i]} == dict(Counter(batch["index"]))
        before = after
        step_lags = Counter(step - planned[u][2] for u in uids)
        lags.update(step_lags)
        assert {k: v for k, v in m.items() if k.startswith("rollout/tau_lag_count/")} == {
            f"rollout/tau_lag_count/{lag}": step_lags.get(lag, 0) for lag in range(min(step_lags), max(step_lags) + 1)}
        assert m["rollout/temperature"] == pytest.approx(np.mean([planned[u][1] for u in uids]))
        assert m["rollout/dispatch_temperature"] == latest_tau(trainer, step)
        assert m["rollout/n_trained_total"] == len(uids)
        assert sum(int(k.rsplit("/", 1)[1]) * v for k, v in m.items()
                   if k.startswith("rollout/n_trained_count/")) == len(uids)  # every trained group's n_i rollouts
        assert sorted(Counter(uids).values()) == sorted(planned[u][0] for u in set(uids))
        assert np.allclose([a[0] for a in batch["adv"]], grpo_advantages(batch["score"], batch["uid"]), atol=1e-5)
    assert lags[0] > 0 and lags[1] > 0  # trained in the step of their dispatch, and one step later


@pytest.mark.slow
def test_the_in_flight_record_is_checkpointed(run, workdir):
    import torch

    trainer, planned = run["trainer"], dispatches(run["trainer"])
    step_dir = workdir / "ckpt_async" / "global_step_2"
    assert (step_dir / "transfer_queue").is_dir()  # verl keeps the in-flight prompts across a restart
    state = torch.load(step_dir / "e3_controller.pt", weights_only=False)
    done = {uid_of(k) for step in (1, 2) for k in trained(trainer, step)["keys"]}
    waiting = [u for p in trainer.plans if p["step"] <= 2 for u in p["uid"] if u not in done]
    assert len(waiting) == 2 and state["inflight"] == [[u, *planned[u]] for u in waiting]


@pytest.fixture(scope="module")
def resumed(run, workdir):
    """From the step-2 checkpoint, one of the two restored prompts marked pending (as if it was still generating
    when the checkpoint was taken), so verl re-issues it from its stored columns."""
    from transformers import AutoTokenizer

    from e3.engines.verl.trainer_async import E3ColocateAsyncTrainer

    server = ScriptedServer(AutoTokenizer.from_pretrained(workdir / "sharp_model"))
    cfg = compose(workdir, *async_overrides(workdir, "ckpt_async_resumed", "trainer.resume_mode=resume_path",
                                            f"trainer.resume_from_path={workdir / 'ckpt_async' / 'global_step_2'}",
                                            "trainer.save_freq=-1"))
    trainer = spy_trainer_cls(E3ColocateAsyncTrainer)(cfg, server)
    agent_loop = assemble(trainer, workdir / "sharp_model", server)
    restored = trainer._inflight.state_dict()
    pending = restored[0][0]
    tq.kv_batch_put(keys=[pending], partition_id="train",
                    tags=[{"is_prompt": True, "status": "pending", "global_steps": 2}])
    trainer.fit(agent_loop)
    return {"trainer": trainer, "server": server, "restored": restored, "pending": pending}


@pytest.mark.slow
def test_a_resumed_run_knows_the_in_flight_prompts_and_decides_as_the_uninterrupted_one(run, resumed, workdir):
    import torch

    original, trainer, server = run["trainer"], resumed["trainer"], resumed["server"]
    saved = torch.load(workdir / "ckpt_async" / "global_step_2" / "e3_controller.pt", weights_only=False)
    assert resumed["restored"] == saved["inflight"]
    # the next decision (step 3's dispatch) is the uninterrupted run's: same prompts, budgets, temperature
    ours, theirs = trainer.plans[0], next(p for p in original.plans if p["step"] == 3)
    assert ours["step"] == 3 and (ours["index"], ours["n"], ours["tau"]) == (theirs["index"], theirs["n"],
                                                                               theirs["tau"])
    # verl re-issued the pending prompt from its stored columns: its n_i requests at its tau, before step 3's
    n, tau, step = dispatches(original)[resumed["pending"]]
    index = next(i for p in original.plans for u, i in zip(p["uid"], p["index"]) if u == resumed["pending"])
    assert server.requests[:ours["first_request"]] == [(index, tau)] * n
    # it is trained at its tau, and its lag counts from its first dispatch (verl reset its tag to the resume step)
    for name, keys, taus in trainer.actor_rollout_wg.row_taus:
        assert all(t == tau for k, t in zip(keys, taus) if uid_of(k) == resumed["pending"])
    when = next(s for s in (3, 4) if resumed["pending"] in {uid_of(k) for k in trained(trainer, s)["keys"]})
    lags = {k: v for k, v in trainer.step_metrics[when - 3].items() if k.startswith("rollout/tau_lag_count/")}
    assert lags.get(f"rollout/tau_lag_count/{when - step}", 0) >= n
    assert trainer.controller.step == STEPS and [p["step"] for p in trainer.plans][-1] == STEPS

