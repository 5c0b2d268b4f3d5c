"""Contract: E3Trainer in verl 0.9.1's real training loop under the settings a cluster run meets besides the default.

One module-scoped run of ``PPOTrainer.fit`` (3 steps, 3 prompts x n=4 of a 6-prompt set, so an E3 epoch ends after
step 2 and step 3 has unequal budgets) with, all at once:

- 4 data-parallel actor ranks and ``ppo_mini_batch_size`` 2 < 3 prompts: verl's ``_balance_batch`` pads 12 rollouts
  to lcm(4, 2 x 4) = 16 and reorders them;
- ``rollout.calculate_log_probs=true`` (verl's default rollout-correction path: decoupled, metrics only);
- ``algorithm.use_kl_in_reward=true`` with a reference model that differs from the actor;
- PREPO relative-entropy weighting (``e3.weighting.enable=true``; a tiny model with larger weights, so the
  rollouts' entropies differ);
- ``trainer.v1.sampler.sync_refill_failed_groups=true`` with a server that fails one request of a prompt in step 2
  (a partial group, which verl keeps) and every request of the step-3 prompt with the largest budget (an empty
  group, which verl evicts and refills).

What it cannot see: the FSDP engine (loss, sharding) and vLLM; see ``verl_harness``.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from e3.advantage import grpo_advantages  # noqa: E402

from .verl_harness import ScriptedServer, assemble, compose, spy_trainer_cls, three_step_overrides  # noqa: E402

B, N, DP, MINI, KL_COEF = 3, 4, 4, 2, 0.5


class Failures:
    """Step s runs on weights version s - 1. Version 1: the first request of the first training prompt seen fails
    (a partial group); version 2: every request of the prompt with the largest budget of the step's plan fails (an
    empty group: verl evicts it; its budget differs from rollout.n, so a replacement planned afresh would differ)."""

    def __init__(self):
        self.plans: list[dict] = []  # the trainer's recorded plans (set once the trainer exists)
        self.victims: dict[int, int] = {}
        self.partial_done = False

    def __call__(self, k: int, version: int) -> bool:
        if k >= 100 or version not in (1, 2):  # validation prompts have indices >= 100
            return False
        if version == 1:
            victim = self.victims.setdefault(1, k)
            if k != victim or self.partial_done:
                return False
            self.partial_done = True
            return True
        plan = self.plans[-1]
        return k == self.victims.setdefault(2, max(zip(plan["n"], plan["index"]))[1])


@pytest.fixture(scope="module")
def run(cluster, workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = workdir / "sharp_model"
    cfg = compose(workdir, *three_step_overrides(workdir, model, "ckpt_variants"),
                  f"actor_rollout_ref.actor.ppo_mini_batch_size={MINI}",
                  "actor_rollout_ref.rollout.calculate_log_probs=true",
                  "algorithm.use_kl_in_reward=true", f"algorithm.kl_ctrl.kl_coef={KL_COEF}",
                  "e3.weighting.enable=true", "trainer.v1.sampler.sync_refill_failed_groups=true",
                  # the tiny models compute in fp32 (TinyActorGroup), so tau is emitted on the fp32 grid
                  "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
                  "+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype=fp32",
                  batch=B, n=N)
    failures = Failures()
    server = ScriptedServer(AutoTokenizer.from_pretrained(model), fail=failures,
                            model=AutoModelForCausalLM.from_pretrained(model).eval())
    trainer = spy_trainer_cls()(cfg, server)
    failures.plans = trainer.plans
    agent_loop = assemble(trainer, model, server, dp=DP, ref_model_dir=workdir / "ref_model")
    trainer.fit(agent_loop)
    return {"trainer": trainer, "server": server, "failures": failures}


def real_rows(rec):
    return [i for i, pad in enumerate(rec["padding"]) if not pad]


def test_balance_batch_pads_for_four_ranks_and_mini_batches_below_the_batch(run):
    trainer = run["trainer"]
    assert [rec["step"] for rec in trainer.adv_rows] == [1, 2, 3]
    rollouts = [len(real_rows(rec)) for rec in trainer.adv_rows]
    assert rollouts == [B * N, B * N - 1, B * N]  # step 2 lost one request; step 3's refill restored the budget
    for rec in trainer.adv_rows:
        assert len(rec["keys"]) == 16 and sum(rec["padding"]) == 16 - len(real_rows(rec))
        for i, pad in enumerate(rec["padding"]):  # verl's no-op rows: no advantage, no tokens
            if pad:
                assert rec["adv"][i] == [0.0] * len(rec["adv"][i]) and sum(rec["mask"][i]) == 0
    actor = trainer.actor_rollout_wg
    updates = [sizes for name, sizes in actor.rank_sizes if name == "update_actor"]
    assert updates == [[4, 4, 4, 4]] * 3  # one even share per rank ...
    assert actor.mini_batches == [2] * 12  # ... of two mini-batches of 8 / 4 ranks rows each
    # the update saw the advantages E3 wrote, row for row
    for rec, (keys, advs) in zip(trainer.adv_rows, actor.advantages):
        assert keys == rec["keys"]
        assert all(np.allclose(a.tolist(), b) for a, b in zip(advs, rec["adv"]))


def test_kl_in_reward_and_prepo_weights_give_the_advantages(run):
    """A_i = GRPO(sum_t r_it over i's group) x w_i, r = verl's KL-penalised token rewards, w_i = H_i / mean_j H_j
    over the real rollouts of the step (H_i: token-mean entropy of rollout i's response); padding excluded."""
    seen_unequal = False
    for rec in run["trainer"].adv_rows:
        rows = real_rows(rec)
        index = [rec["index"][i] for i in rows]
        seen_unequal |= len(set(Counter(index).values())) > 1
        rewards = np.array([sum(rec["rewards"][i]) for i in rows])
        scores = np.array([rec["score"][i] for i in rows])
        assert np.all(np.abs(rewards - scores) > 1e-6)  # the KL penalty moved every rollout's return
        h = np.array([np.dot(rec["entropy"][i], rec["mask"][i]) / sum(rec["mask"][i]) for i in rows])
        expected = grpo_advantages(rewards, index) * (h / h.mean())
        for i, want in zip(rows, expected):
            assert np.allclose(rec["adv"][i], [want] * len(rec["adv"][i]), atol=1e-5)
        assert not np.allclose(expected, grpo_advantages(rewards, index), atol=1e-4)  # the weights mattered
    assert seen_unequal


def test_calculate_log_probs_runs_verls_rollout_correction_with_e3_on(run):
    server, trainer = run["server"], run["trainer"]
    assert server.requests and all(type(tau) is float for _, tau in server.requests)
    for m in trainer.step_metrics:
        # verl compared the server's log-probs (tiny model at the request's tau) with the old-log-prob pass (at
        # the config's tau): identical taus, identical numbers
        assert m["training/rollout_probs_diff_valid"] == 1
        assert m["training/rollout_probs_diff_max"] < 1e-5
        assert any(key.startswith("rollout_corr/") for key in m)
    assert trainer.step_metrics[2]["rollout/temperature"] != 1.0  # tau was scheduled by then


def test_refilled_prompt_inherits_the_evicted_budget_and_only_real_rollouts_are_recorded(run):
    trainer, failures, server = run["trainer"], run["failures"], run["server"]
    partial, empty = failures.victims[1], failures.victims[2]
    plans = defaultdict(list)
    for p in trainer.plans:
        plans[p["step"]].append(p)
    # step 3: the first plan covers the batch, the refill plans one replacement with the evicted prompt's budget
    first, refill = plans[3]
    assert len(first["index"]) == B and len(refill["index"]) == 1 and empty in first["index"]
    evicted_n = first["n"][first["index"].index(empty)]
    assert evicted_n != N and refill["n"] == [evicted_n] and refill["index"][0] not in first["index"]
    assert len(set(first["n"])) > 1  # unequal budgets (bounds [2, 6] after the epoch end) ...
    assert sum(first["n"]) == B * N  # ... and the step still spends B x n rollouts
    m3 = trainer.step_metrics[2]
    assert m3["training/rollout_failure/evicted_samples"] == 1 and m3["rollout/refilled_prompts"] == 1
    assert m3["rollout/n_total"] == B * N
    assert [k for k, v in server.failed if v == 2] == [empty] * evicted_n
    # difficulty records: the evicted prompt gets none in step 3, the replacement gets its n_i, the partial
    # group of step 2 gets the n_i - 1 rollouts it kept; raw scores (not KL-penalised) are what is averaged
    counts = {c["step"]: dict(zip(c["index"], c["count"])) for c in trainer.counts}
    step2_n = dict(zip(plans[2][0]["index"], plans[2][0]["n"]))
    assert counts[2][partial] - counts[1][partial] == step2_n[partial] - 1
    assert counts[3][empty] == counts[2][empty]
    assert counts[3][refill["index"][0]] - counts[2][refill["index"][0]] == evicted_n
    scores = defaultdict(list)
    for rec in trainer.adv_rows:
        for i in real_rows(rec):
            scores[rec["index"][i]].append(rec["score"][i])
    last = {c["step"]: dict(zip(c["index"], c["accuracy"])) for c in trainer.counts}[3]
    for k, s in scores.items():
        assert counts[3][k] == len(s) and last[k] == pytest.approx(np.mean(s))


def test_the_step_logs_what_it_trained_beside_what_it_planned(run):
    """Step 2 lost one request of one prompt: planned B x n, trained one less, that prompt's trained budget n_i - 1.
    Step 3's evicted prompt is out of the step (its budget went to the replacement), so nothing is missing there."""
    trainer = run["trainer"]
    partial = run["failures"].victims[1]
    m1, m2, m3 = trainer.step_metrics
    assert (m1["rollout/n_trained_total"], m1["rollout/n_failed"]) == (B * N, 0)
    assert (m2["rollout/n_total"], m2["rollout/n_trained_total"], m2["rollout/n_failed"]) == (B * N, B * N - 1, 1)
    step2 = next(p for p in trainer.plans if p["step"] == 2)
    trained = Counter(step2["n"])
    n_partial = step2["n"][step2["index"].index(partial)]
    trained[n_partial] -= 1
    trained[n_partial - 1] += 1
    logged = {int(k.rsplit("/", 1)[1]): v for k, v in m2.items() if k.startswith("rollout/n_trained_count/")}
    assert {n: c for n, c in logged.items() if c} == {n: c for n, c in trained.items() if c}
    assert (m3["rollout/n_trained_total"], m3["rollout/n_failed"]) == (B * N, 0)
    real = [len(real_rows(rec)) for rec in trainer.adv_rows]
    assert [m["rollout/n_trained_total"] for m in (m1, m2, m3)] == real
