"""Contract: E3Trainer inside verl 0.9.1's real training loop on CPU (only the LLM server and the GPU workers fake).

One module-scoped run of ``PPOTrainer.fit`` (6 steps, batch 4 prompts x n=4, an E3 epoch ends after step 4, checkpoints
at steps 3 and 6 — also copied to ``trainer.default_hdfs_dir`` — and ``actor.loss_agg_mode=seq-mean-token-sum``,
under which verl's ``actor/entropy`` is not a token mean), then a resumed run from the step-6 checkpoint. See
``verl_harness`` for what is real and what is replaced; the Ray + TransferQueue and model fixtures are in conftest.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")


from e3.advantage import grpo_advantages  # noqa: E402
from e3.temperature import representable, temperature_update  # noqa: E402

from .verl_harness import ScriptedServer, assemble, compose, spy_trainer_cls  # noqa: E402

B, N = 4, 4


def main_run(workdir):
    """This module's settings on top of ``compose``'s: a loss aggregation under which verl's ``actor/entropy`` is
    not a token mean, and a remote checkpoint folder (a local path: verl's hdfs_io copies those with shutil)."""
    return ("actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum",
            f"trainer.default_hdfs_dir={workdir / 'remote'}")

SHARED = ["step", "rollout/temperature", "rollout/entropy", "rollout/target_entropy", "rollout/n_min",
          "rollout/n_max", "rollout/n_total", "reward/mean", "groups/all_correct", "groups/all_wrong",
          "groups/informative_rollouts"]


@pytest.fixture(scope="module")
def run(cluster, workdir, tmp_path_factory):
    from transformers import AutoTokenizer

    logdir = tmp_path_factory.mktemp("logs")
    env = pytest.MonkeyPatch()  # verl's file and tensorboard loggers write here (for this module's runs only)
    env.setenv("VERL_FILE_LOGGER_PATH", str(logdir / "metrics.jsonl"))
    env.setenv("TENSORBOARD_DIR", str(logdir / "tb"))
    server = ScriptedServer(AutoTokenizer.from_pretrained(workdir / "model"))
    trainer = spy_trainer_cls()(compose(workdir, *main_run(workdir)), server)
    agent_loop = assemble(trainer, workdir / "model", server)
    trainer.fit(agent_loop)
    logged = [json.loads(line) for line in open(logdir / "metrics.jsonl")]
    yield {"trainer": trainer, "server": server, "logged": logged, "logdir": logdir}
    env.undo()


def _train_metrics(run):
    return {rec["step"]: rec["data"] for rec in run["logged"] if "rollout/n_total" in rec["data"]}


def test_budgets_sum_to_batch_times_n_and_vary_after_the_epoch_end(run):
    plans = run["trainer"].plans
    assert [p["step"] for p in plans] == [1, 2, 3, 4, 5, 6]
    for p in plans:
        assert sum(p["n"]) == B * N  # mini-batch sizing and _balance_batch rely on it
    assert all(p["n"] == [N] * B for p in plans[:4])  # epoch 1: bounds [4, 4]
    later = [n for p in plans[4:] for n in p["n"]]
    assert min(later) >= 2 and max(later) <= 6 and len(set(later)) > 1  # epoch 2: bounds [2, 6], budgets differ


def test_the_real_run_prompt_makes_exactly_n_i_rollouts_at_the_planned_temperature(run):
    plans, requests = run["trainer"].plans, run["server"].requests
    for p, nxt in zip(plans, plans[1:] + [None]):
        window = requests[p["first_request"]:(nxt["first_request"] if nxt else len(requests))]
        train = [(k, tau) for k, tau in window if k in p["index"]]  # validation prompts have other indices
        assert Counter(k for k, _ in train) == Counter(dict(zip(p["index"], p["n"])))
        # vLLM gets exactly the Python float the training passes divide the logits by (no float32 rounding)
        assert train and all(type(tau) is float and tau == p["config_tau"] for _, tau in train)
        assert type(p["config_tau"]) is float and set(p["tau"]) == {p["config_tau"]}
    val = [tau for k, tau in requests if k >= 100]
    assert val and set(val) == {0.0}  # validation keeps verl's greedy val_kwargs


def test_log_prob_and_update_passes_use_the_step_temperature(run):
    calls = run["trainer"].actor_rollout_wg.calls
    per_step = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert len(per_step) == 6
    for p, ((name1, tau1), (name2, tau2)) in zip(run["trainer"].plans, per_step):
        assert (name1, name2) == ("compute_log_prob", "update_actor")
        assert tau1 == tau2 == p["config_tau"]  # bit-identical to what the rollout got (previous test)
    taus = [p["tau"][0] for p in run["trainer"].plans]
    assert taus[0] == taus[1] == 1.0 and len(set(taus[2:])) > 1  # warm-up at tau_0, then scheduled
    # verl's engine divides the logits by tau cast to the logits dtype (bf16: verl's default mixed precision here),
    # so every emitted tau is on the bf16 grid, while the scheduler keeps its exact value
    assert all(representable(t, "bf16") == t for t in taus)
    exact = [p["exact_tau"] for p in run["trainer"].plans]
    assert any(e != t for e, t in zip(exact[2:], taus[2:]))


def token_mean_by_hand(rec) -> float:
    """E3 Eq. 4's H_t from one step's recorded ``entropy`` field: sum of entropy x mask over the response tokens of
    the non-padding rows, divided by their number of tokens."""
    num = sum(e * m for ent, mask, pad in zip(rec["entropy"], rec["mask"], rec["padding"]) if not pad
              for e, m in zip(ent, mask))
    den = sum(m for mask, pad in zip(rec["mask"], rec["padding"]) if not pad for m in mask)
    return num / den


def test_the_scheduler_steps_on_the_token_mean_entropy(run):
    """Under seq-mean-token-sum verl's ``actor/entropy`` is a mean of per-sequence sums; H_t stays a token mean."""
    metrics = _train_metrics(run)
    vocab = len(run["trainer"].tokenizer)
    taus = [p["tau"][0] for p in run["trainer"].plans]
    by_step = {rec["step"]: token_mean_by_hand(rec) for rec in run["trainer"].entropy_rows}
    for step in range(1, 7):
        m = metrics[step]
        assert m["rollout/entropy"] == pytest.approx(by_step[step], rel=1e-9)
        assert m["actor/entropy"] > 2 * m["rollout/entropy"]  # verl's value: summed over ~10 response tokens
    exact = [p["exact_tau"] for p in run["trainer"].plans]
    for step in range(2, 6):
        m = metrics[step]
        assert m["rollout/temperature"] == taus[step - 1]
        expected = temperature_update(exact[step - 1], by_step[step], m["rollout/target_entropy"], vocab)
        assert exact[step] == pytest.approx(min(2.0, max(0.5, expected)), rel=1e-9)
        assert taus[step] == representable(exact[step], "bf16")  # what was sampled and trained with


def test_grpo_advantages_over_the_unequal_groups(run):
    seen_unequal = False
    for rec in run["trainer"].adv_rows:
        sizes = Counter(rec["uid"])
        seen_unequal |= len(set(sizes.values())) > 1
        expected = grpo_advantages(rec["score"], rec["uid"])
        for adv_tokens, want in zip(rec["adv"], expected):
            assert adv_tokens and np.allclose(adv_tokens, want, atol=1e-5)
    assert seen_unequal
    # the update saw exactly those advantages
    keys, advs = run["trainer"].actor_rollout_wg.advantages[-1]
    assert len(keys) == sum(Counter(run["trainer"].adv_rows[-1]["uid"]).values())


def test_controller_metrics_go_through_verls_tracking(run):
    metrics = _train_metrics(run)
    assert sorted(metrics) == [1, 2, 3, 4, 5, 6]
    for step, m in metrics.items():
        for name in SHARED:
            assert name in m, (step, name)
        assert m["rollout/n_total"] == B * N
        assert m["step"] == step
    assert metrics[5]["rollout/n_min"] == 2 and metrics[5]["rollout/n_max"] == 6
    counts = {k: v for k, v in metrics[5].items() if k.startswith("rollout/n_count/")}
    assert sum(counts.values()) == B and sum(int(k.rsplit("/", 1)[1]) * v for k, v in counts.items()) == B * N
    val_steps = sorted(rec["step"] for rec in run["logged"] if "val/accuracy" in rec["data"])
    assert val_steps == [0, 3, 6]
    assert list((run["logdir"] / "tb").glob("events.*")), "tensorboard accepted every metric"
    # difficulty follows the scripted server: prompts with k % 4 == 0 are never solved
    tracker = run["trainer"].controller.allocator.tracker
    assert all(a == 0.0 for a in tracker.accuracy([0, 4, 8, 12]))
    assert all(a > 0.0 for a in tracker.accuracy([1, 2, 3, 5]))


def test_controller_state_is_checkpointed_and_restored(run, workdir):
    import torch

    ckpt = workdir / "ckpt"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "6"
    for step in (3, 6):
        state = torch.load(ckpt / f"global_step_{step}" / "e3_controller.pt", weights_only=False)
        assert state["global_step"] == step and state["controller"]["step"] == step
    # trainer.default_hdfs_dir: the controller state is copied beside where verl uploads the actor
    for step in (3, 6):
        remote = workdir / "remote" / f"global_step_{step}" / "e3_controller.pt"
        assert remote.read_bytes() == (ckpt / f"global_step_{step}" / "e3_controller.pt").read_bytes()
    original = run["trainer"]
    assert torch.load(ckpt / "global_step_6" / "e3_controller.pt",
                      weights_only=False)["controller"] == original.controller.state_dict()

    server = ScriptedServer(original.tokenizer)
    resumed = spy_trainer_cls()(compose(workdir, *main_run(workdir), "trainer.total_training_steps=8"), server)
    agent_loop = assemble(resumed, workdir / "model", server)
    assert resumed.global_steps == 6 and resumed.actor_rollout_wg.loaded
    assert resumed.controller.state_dict() == original.controller.state_dict()
    # the next decisions equal the uninterrupted run's: same prompts, budgets and temperature
    original.global_steps = resumed.global_steps = 7
    original.on_step_begin(), resumed.on_step_begin()
    a, b = original._next_train_batch(), resumed._next_train_batch()
    assert [int(i) for i in a["index"]] == [int(i) for i in b["index"]]
    assert a["__rollout_n__"].tolist() == b["__rollout_n__"].tolist()
    assert a["__temperature__"].tolist() == b["__temperature__"].tolist()
    # and the resumed run trains on
    resumed.global_steps, resumed.plans = 6, []
    resumed._init_dataloader()  # undo the probe: fresh dataloader and controller, restored from the checkpoint
    resumed._load_checkpoint()
    resumed.fit(agent_loop)
    assert resumed.controller.step == 8 and [p["step"] for p in resumed.plans] == [7, 8]


def test_resuming_a_checkpoint_without_controller_state_fails_clearly(run, workdir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(workdir / "ckpt", ckpt)
    for f in ckpt.glob("global_step_*/e3_controller.pt"):
        f.unlink()
    server = ScriptedServer(run["trainer"].tokenizer)
    trainer = spy_trainer_cls()(compose(workdir, *main_run(workdir), f"trainer.default_local_dir={ckpt}"), server)
    with pytest.raises(FileNotFoundError, match="e3_controller.pt is missing"):
        assemble(trainer, workdir / "model", server)


def advantages_of(trainer, scores, uids, entropies=None):
    """Put hand-made rollouts (one row each, 3 response tokens; uid "pad..." = verl padding) into TransferQueue,
    run ``trainer._compute_advantage`` on them and return the per-token advantages it wrote."""
    import torch
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    from verl.utils import tensordict_utils as tu

    sessions = Counter()
    keys, tags = [], []
    for uid in uids:
        keys.append(f"{uid}_{sessions[uid]}_0")
        sessions[uid] += 1
        tags.append({"is_padding": True} if uid.startswith("pad") else {})
    mask = [torch.zeros(3, dtype=torch.int64) if u.startswith("pad") else torch.ones(3, dtype=torch.int64)
            for u in uids]
    fields = {"response_mask": torch.nested.as_nested_tensor(mask, layout=torch.jagged),
              "rm_scores": torch.nested.as_nested_tensor([torch.tensor([0.0, 0.0, s]) for s in scores],
                                                         layout=torch.jagged)}
    if entropies is not None:
        fields["entropy"] = torch.nested.as_nested_tensor([torch.full((3,), float(h)) for h in entropies],
                                                          layout=torch.jagged)
    fields = TensorDict(fields, batch_size=len(uids))
    tu.assign_non_tensor_stack(fields, "uid", list(uids))
    tu.assign_non_tensor_stack(fields, "index", [sorted(set(uids)).index(u) for u in uids])
    tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=tags)
    trainer._step_entropy = 1.0
    trainer._compute_advantage(KVBatchMeta(keys=keys, tags=tags, partition_id="train"), {})
    adv = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])["advantages"].unbind()
    tq.kv_clear(keys=keys, partition_id="train")
    return [t.tolist() for t in adv]


def test_singleton_and_padding_rows_get_zero_advantage(run):
    """verl's GRPO returns a singleton's raw score as its advantage; ours gives 0 (and 0 to verl's padding)."""
    adv = advantages_of(run["trainer"], [1.0, 0.0, 0.0, 1.0, 0.0], ["uidA", "uidA", "uidA", "uidB", "padX"])
    expected = grpo_advantages([1.0, 0.0, 0.0], ["A"] * 3)
    assert expected[0] > 0 > expected[1]
    for row in range(3):
        assert np.allclose(adv[row], [expected[row]] * 3, atol=1e-5)
    assert adv[3] == [0.0, 0.0, 0.0]  # singleton: verl would give 1.0
    assert adv[4] == [0.0, 0.0, 0.0]  # padding (its response mask is 0)


def test_prepo_weights_multiply_the_advantages(cluster, workdir):
    """PREPO: w_i = H_i / mean(H) over the whole batch (H_i: rollout i's token-mean entropy from the log-prob pass)."""
    from e3.engines.verl.trainer import E3Trainer

    trainer = E3Trainer(compose(workdir, "e3.weighting.enable=true"))
    trainer._init_tokenizer()
    trainer._init_dataloader()
    scores, uids = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0], ["u1", "u1", "u1", "u2", "u2", "u2"]
    entropies = [0.5, 1.0, 1.5, 2.0, 1.0, 2.0]
    adv = advantages_of(trainer, scores, uids, entropies)
    weights = np.asarray(entropies) / np.mean(entropies)
    expected = grpo_advantages(scores, uids) * weights
    for row, want in enumerate(expected):
        assert np.allclose(adv[row], [want] * 3, atol=1e-5)
    assert not np.allclose(expected, grpo_advantages(scores, uids))  # the weights did change something


class HandEntropyGroup:
    """An actor group whose old-log-prob pass returns hand-written entropies (prompt of one token, so the response
    part of a row of length R is the first R values, as verl's ``response_from_nested`` reads it)."""

    _dispatch_info = {"actor": [0]}

    def __init__(self, entropies):
        self.entropies = entropies

    def compute_log_prob(self, batch):
        import torch
        from tensordict import TensorDict

        full = [torch.tensor([*e, 0.0]) for e in self.entropies]
        out = TensorDict({"entropy": torch.nested.as_nested_tensor(full, layout=torch.jagged),
                          "log_probs": torch.nested.as_nested_tensor([torch.zeros_like(t) for t in full],
                                                                     layout=torch.jagged)}, batch_size=len(batch))
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=out)
        return batch


def test_the_scheduler_entropy_is_the_token_mean_under_seq_mean_token_sum(cluster, workdir):
    """Hand-computed: rows of 4, 2 (+1 masked) and 2 response tokens, and one padding row.

    verl's ``actor/entropy`` under seq-mean-token-sum: (4.0 + 4.0 + 1.0 + 9.0) / 4 sequences = 4.5 (its padding row
    has a nonzero mask here, so verl counts it). E3 Eq. 4's H_t: (4.0 + 4.0 + 1.0) / (4 + 2 + 2) tokens = 1.125.
    """
    import torch
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta

    from e3.engines.verl.trainer import E3Trainer
    from verl.utils import tensordict_utils as tu

    trainer = E3Trainer(compose(workdir, "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum"))
    trainer._init_tokenizer()
    trainer._init_dataloader()
    entropies = [[1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 100.0], [0.25, 0.75], [9.0]]
    masks = [[1, 1, 1, 1], [1, 1, 0], [1, 1], [1]]
    uids = ["uidA", "uidA", "uidB", "padX"]
    keys = [f"{u}_{i}_0" for i, u in enumerate(uids)]
    tags = [{}, {}, {}, {"is_padding": True}]
    fields = TensorDict({
        "response_mask": torch.nested.as_nested_tensor([torch.tensor(m) for m in masks], layout=torch.jagged),
        "rm_scores": torch.nested.as_nested_tensor([torch.zeros(len(m)) for m in masks], layout=torch.jagged),
    }, batch_size=len(keys))
    tu.assign_non_tensor_stack(fields, "uid", uids)
    tu.assign_non_tensor_stack(fields, "index", [0, 0, 1, 2])
    tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=tags)
    trainer.actor_rollout_wg = HandEntropyGroup(entropies)
    meta = KVBatchMeta(keys=keys, tags=tags, partition_id="train")
    metrics = {}
    meta = trainer._compute_old_log_prob(meta, metrics)
    trainer._compute_advantage(meta, {})
    tq.kv_clear(keys=keys, partition_id="train")
    assert metrics["actor/entropy"] == pytest.approx(4.5)
    assert trainer._e3_metrics["rollout/entropy"] == pytest.approx(1.125)
    assert trainer.controller.scheduler.initial_entropy == pytest.approx(1.125)  # step 1 sets H_target from it
