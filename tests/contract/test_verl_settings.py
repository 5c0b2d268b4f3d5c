"""Contract: verl settings a user changes every day, honoured by E3Trainer in verl 0.9.1's real training loop.

One module-scoped run of ``PPOTrainer.fit`` (3 steps, 4 prompts x n=3 of a 6-prompt set) with, all at once:

- ``algorithm.norm_adv_by_std_in_grpo=false`` (Dr. GRPO: A = s - mean, no division by the group std);
- ``actor_rollout_ref.rollout.temperature=0.6`` with ``e3.temperature.enable=false`` (a fixed-tau ablation: tau_0 is
  verl's key), in verl's default bf16 mixed precision (so the tau sent is 0.6 on the bf16 grid, 0.6015625);
- ``algorithm.use_kl_in_reward=true`` with E3's length bias on every prompt (rank threshold 1): correctness from
  the raw score, the KL term kept;
- ``data.gen_batch_size=1`` with ``data.seed=9``: verl fetches prompts one by one, so step 2 runs across the epoch
  end and dispatches two prompts twice (two uids each; the seed is chosen so it happens, and the test checks it;
  n=3 against the scripted server's cycle of 4 makes the two groups of a prompt differ).

What it cannot see: the FSDP engine (loss, sharding) and vLLM; see ``verl_harness``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from e3.advantage import grpo_advantages, length_bias_scores  # noqa: E402
from e3.temperature import representable  # noqa: E402

from .verl_harness import ScriptedServer, assemble, compose, spy_trainer_cls, three_step_overrides  # noqa: E402

B, N, KL_COEF, THRESHOLD, MU = 4, 3, 0.5, 1.0, 0.001
TAU = representable(0.6, "bf16")


@pytest.fixture(scope="module")
def run(cluster, workdir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = workdir / "sharp_model"
    cfg = compose(workdir, *three_step_overrides(workdir, model, "ckpt_settings"),
                  "data.gen_batch_size=1", "data.seed=9",
                  "algorithm.norm_adv_by_std_in_grpo=false",
                  "actor_rollout_ref.rollout.temperature=0.6", "e3.temperature.enable=false",
                  "algorithm.use_kl_in_reward=true", f"algorithm.kl_ctrl.kl_coef={KL_COEF}",
                  "e3.advantage.length_bias=true", f"e3.advantage.length_rank_threshold={THRESHOLD}",
                  f"e3.advantage.length_penalty_coeff={MU}",
                  batch=B, n=N)
    server = ScriptedServer(AutoTokenizer.from_pretrained(model),
                            model=AutoModelForCausalLM.from_pretrained(model).eval())

    class Spy(spy_trainer_cls()):
        """Also records each prompt's difficulty k as the advantage step saw it (before ``observe``)."""

        def _compute_advantage(self, batch, metrics):
            every = self.controller.dataset_indices
            k = self.controller.allocator.tracker.difficulty(every, unranked=1.0)
            self.difficulty = getattr(self, "difficulty", []) + [dict(zip(every.tolist(), k.tolist()))]
            return super()._compute_advantage(batch, metrics)

    trainer = Spy(cfg, server)
    agent_loop = assemble(trainer, model, server, ref_model_dir=workdir / "ref_model")
    trainer.fit(agent_loop)
    return {"trainer": trainer, "server": server}


def real_rows(rec):
    return [i for i, pad in enumerate(rec["padding"]) if not pad]


def step_arrays(rec):
    rows = real_rows(rec)
    raw = np.array([rec["score"][i] for i in rows])
    returns = np.array([sum(rec["rewards"][i]) for i in rows])  # verl's KL-penalised token rewards, summed
    lengths = np.array([float(sum(rec["mask"][i])) for i in rows])
    adv = np.array([rec["adv"][i][0] for i in rows])
    return rows, raw, returns, lengths, adv


def test_a_prompt_dispatched_twice_in_a_step_is_two_groups(run):
    trainer = run["trainer"]
    dup_steps = []
    for plan in trainer.plans:
        counts = Counter(plan["index"])
        if any(c > 1 for c in counts.values()):
            dup_steps.append(plan["step"])
            assert len(set(plan["uid"])) == len(plan["uid"])  # verl gave each dispatch its own uid
    assert dup_steps == [2]  # data.seed=9: step 2 spans the epoch end with two repeated prompts
    rec = trainer.adv_rows[1]
    rows, raw, returns, lengths, adv = step_arrays(rec)
    uids = [rec["uid"][i] for i in rows]
    index = [rec["index"][i] for i in rows]
    assert len(set(uids)) > len(set(index))
    k = [trainer.difficulty[1][i] for i in index]
    shaped = length_bias_scores(raw, lengths, k, MU, THRESHOLD) + (returns - raw)
    assert np.allclose(adv, grpo_advantages(shaped, uids, norm_by_std=False), atol=1e-5)
    assert not np.allclose(adv, grpo_advantages(shaped, index, norm_by_std=False), atol=1e-4)  # pooled by index
    # the difficulty record stays per index: a repeated prompt's count grew by the rollouts of both its groups
    before, after = trainer.counts[0], trainer.counts[1]
    grew = {i: a - b for i, a, b in zip(after["index"], after["count"], before["count"])}
    for i, c in Counter(index).items():
        assert grew[i] == c


def test_dr_grpo_and_kl_in_reward_with_the_length_bias_on_the_raw_score(run):
    """A_i = (r_i - mean_g r) with r_i = lb(raw_i) + (sum_t verl's token reward - raw_i), g = uid, lb = E3's length bias
    on the prompts with difficulty k <= threshold, decided by the raw score."""
    trainer = run["trainer"]
    biased = std_differs = old_differs = False
    for rec, kmap in zip(trainer.adv_rows, trainer.difficulty):
        rows, raw, returns, lengths, adv = step_arrays(rec)
        uids = [rec["uid"][i] for i in rows]
        k = np.array([kmap[rec["index"][i]] for i in rows])
        assert np.all(np.abs(returns - raw) > 1e-6)  # the KL penalty moved every return
        shaped = length_bias_scores(raw, lengths, k, MU, THRESHOLD) + (returns - raw)
        expected = grpo_advantages(shaped, uids, norm_by_std=False)
        assert np.allclose(adv, expected, atol=1e-5)
        biased |= bool(np.any((k <= THRESHOLD) & (raw > 0)))
        std_differs |= not np.allclose(expected, grpo_advantages(shaped, uids), atol=1e-4)
        old = length_bias_scores(returns, lengths, k, MU, THRESHOLD)  # the bias applied to the penalised return
        old_differs |= not np.allclose(expected, grpo_advantages(old, uids, norm_by_std=False), atol=1e-4)
    assert biased and std_differs and old_differs  # each setting changed the advantages somewhere


def test_a_fixed_tau_ablation_samples_and_trains_at_verls_rollout_temperature(run):
    server, trainer = run["server"], run["trainer"]
    assert TAU == 0.6015625
    assert server.requests and {tau for _, tau in server.requests} == {TAU}
    assert {p["config_tau"] for p in trainer.plans} == {TAU}
    assert {tau for _, tau in trainer.actor_rollout_wg.calls} == {TAU}  # old-log-prob, ref? and update passes
    assert {tau for _, tau in trainer.ref_policy_wg.calls} == {TAU}
    assert {m["rollout/temperature"] for m in trainer.step_metrics} == {TAU}


def test_a_bad_tau_is_refused_on_the_driver_before_the_batch_is_sent(run, monkeypatch):
    """A worker that raised on it would leave verl's replay buffer waiting for the group forever."""
    from e3.controller import StepPlan

    trainer = run["trainer"]

    def bad_plan(indices, total=None):
        idx = np.asarray(indices).ravel()
        return StepPlan(idx, np.full(idx.size, N), float("nan"))

    monkeypatch.setattr(trainer.controller, "plan", bad_plan)
    before = (tq.kv_list("train") or {}).get("train", {})
    with pytest.raises(ValueError, match=r"__temperature__=nan for prompt uid=.*finite and > 0"):
        trainer._next_train_batch()
    assert (tq.kv_list("train") or {}).get("train", {}) == before  # nothing reached TransferQueue
