"""End to end: E3Trainer in verl 0.9.1's real loop on the CPU (``verl_cpu_tiny``), checked from the run's own outputs.

Nothing is mocked: verl's Ray actors (task runner, FSDP2 actor worker on gloo, agent-loop and reward-loop workers,
TransferQueue), our ``e3_cpu`` platform and ``hf`` rollout (transformers ``generate``), a warm-started tiny Llama on
the arithmetic task. ``verl_cpu_runs.py`` (run in a subprocess, so this process never loads verl's CPU platform)
writes two runs: ``a`` (4 steps, checkpoints at 3 and 4) and ``b`` (resumed from ``a``'s step 3). What is read:

- ``metrics.jsonl``: verl's file logger (verl's metrics and the E3 controller's, one record per step);
- ``requests.jsonl``: the rollout server's log of every request it sampled (weights version, prompt, temperature);
- ``rollouts/<step>.jsonl``: verl's own dump of each step's trained batch (``trainer.rollout_data_dir``);
- ``checkpoints/global_step_N``: verl's checkpoint (+ the actor in transformers format) and ``e3_controller.pt``;
- ``validation/4.jsonl``: verl's dump of run ``a``'s one validation (after step 4: 4 samples per problem at T = 1.0).

What it cannot see: vLLM, NCCL and multi-GPU sharding (one CPU process trains, gloo, FSDP over one rank).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from e3.engines.verl.cpu.tiny import training_steps
from e3.io import read_jsonl

pytestmark = pytest.mark.slow

B, N, VOCAB = 8, 8, 16  # prompts per step, rollout.n, the character vocabulary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl_cpu")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("verl_cpu_runs.py")), str(root)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"runs failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    from transformers import AutoTokenizer

    assets = json.loads((root / "assets.json").read_text())
    tok = AutoTokenizer.from_pretrained(assets["model_dir"])
    out = {"root": root, "assets": assets, "stdout": proc.stdout}
    for name in ("a", "b"):
        run = root / name
        requests = read_jsonl(run / "requests.jsonl")
        for r in requests:
            r["prompt"] = tok.decode(r["prompt_ids"])
        out[name] = {"dir": run, "metrics": training_steps(run), "requests": requests}
    import pandas as pd

    rows = pd.read_parquet(Path(assets["data_dir"]) / "train.parquet")
    out["index_of"] = {r["prompt"][0]["content"]: int(r["extra_info"]["index"]) for _, r in rows.iterrows()}
    return out


def sampled(run: dict, step: int) -> list[dict]:
    """The training requests of ``step``: sampled with the weights after step - 1 (version step - 1)."""
    return [r for r in run["requests"] if r["weights_version"] == step - 1 and r["temperature"] > 0]


def trained(run: dict, step: int) -> list[dict]:
    return read_jsonl(run["dir"] / "rollouts" / f"{step}.jsonl")


def test_the_run_printed_its_summary(runs):
    assert "verl_cpu_tiny run:" in runs["stdout"] and "reward/mean" in runs["stdout"]


def test_rewards_are_non_zero_and_parameters_changed(runs):
    import torch
    from safetensors.torch import load_file

    a = runs["a"]
    assert sorted(a["metrics"]) == [1, 2, 3, 4]
    scores = [row["score"] for step in range(1, 5) for row in trained(a, step)]
    assert len(scores) == 4 * B * N and 0 < sum(scores) < len(scores)  # some right, some wrong
    assert all(a["metrics"][s]["reward/mean"] > 0 for s in range(1, 5))
    before = load_file(Path(runs["assets"]["model_dir"]) / "model.safetensors")
    after = load_file(a["dir"] / "checkpoints" / "global_step_4" / "actor" / "huggingface" / "model.safetensors")
    assert set(before) == set(after)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), sorted(set(before) - set(changed))
    # the rollout received the new weights before every step (the server's weights version moves with the step)
    assert [sorted({r["weights_version"] for r in sampled(a, s)}) for s in range(1, 5)] == [[0], [1], [2], [3]]


def test_budgets_sent_sampled_and_trained_agree_per_prompt(runs):
    import torch

    from e3.schema import E3Config
    from e3.controller import E3Controller

    a, index_of = runs["a"], runs["index_of"]
    for step in range(1, 5):
        got = Counter(r["prompt"] for r in sampled(a, step))
        done = Counter(row["input"] for row in trained(a, step))
        assert got == done, step  # n_i sampled == n_i trained on, per prompt
        assert len(got) == B and sum(got.values()) == B * N
        hist = Counter(got.values())  # what the controller sent, as it logged it: rollout/n_count/<n>
        logged = {int(k.rsplit("/", 1)[1]): v for k, v in a["metrics"][step].items()
                  if k.startswith("rollout/n_count/") and v}
        assert hist == logged, step
        if step <= 2:
            assert set(got.values()) == {N}  # first epoch: budgets [8, 8]
        else:
            assert len(set(got.values())) > 1 and min(got.values()) >= 6 and max(got.values()) <= 10
    # n_i sent at step 4, per prompt: the controller restored from the step-3 checkpoint plans exactly those
    state = torch.load(a["dir"] / "checkpoints" / "global_step_3" / "e3_controller.pt", weights_only=False)
    ctl = E3Controller(E3Config.from_dict(state["e3_config"]), n=N, vocab_size=VOCAB, max_steps=4,
                       dataset_indices=sorted(index_of.values()), batch_size=B)
    ctl.load_state_dict(state["controller"])
    step4 = Counter(index_of[r["prompt"]] for r in sampled(a, 4))
    plan = ctl.plan(list(step4), total=B * N)
    planned = dict(zip(plan.indices.tolist(), plan.n_per_prompt.tolist()))
    # The requests are logged in arrival order, not the batch's: the leftover rollouts that go one at a time to
    # prompts of equal difficulty may land on another of those prompts. Every other budget must match exactly.
    assert sorted(planned.values()) == sorted(step4.values())
    k = dict(zip(list(step4), ctl.allocator.tracker.difficulty(list(step4)).tolist()))
    for i in step4:
        if planned[i] != step4[i]:
            assert abs(planned[i] - step4[i]) == 1 and sum(k[j] == k[i] for j in step4) > 1, (i, planned, dict(step4))


def test_each_prompt_is_sampled_at_the_controllers_tau_and_the_update_divides_by_it(runs):
    a = runs["a"]
    taus = []
    for step in range(1, 5):
        m = a["metrics"][step]
        tau = m["rollout/temperature"]  # the controller's tau for this step
        taus.append(tau)
        requests = sampled(a, step)
        assert requests and all(r["temperature"] == pytest.approx(tau, rel=1e-6) for r in requests)
        # the sampler's log-probs (log softmax(logits / tau)) equal the actor's old log-probs: same weights and the
        # same tau in the trainer's log-prob pass ...
        assert m["training/rollout_probs_diff_max"] < 1e-4, (step, m["training/rollout_probs_diff_max"])
        # ... and the update's first (only) mini-batch reproduces them exactly: ratio 1, nothing clipped
        assert abs(m["actor/ppo_kl"]) < 1e-7 and m["actor/pg_clipfrac"] == 0.0
    assert taus[0] == pytest.approx(0.8)  # tau_0 = 0.8: a pass at the config's 1.0 would show in the diff above


def test_the_scheduler_steps_on_the_reduced_entropy(runs):
    from e3.temperature import temperature_update

    m = runs["a"]["metrics"]
    for step in range(1, 5):
        assert m[step]["rollout/entropy"] == pytest.approx(m[step]["actor/entropy"], rel=1e-5)
    for step in range(1, 4):  # E3 Eq. 4 on that entropy gives the next step's tau (clamped to [0.5, 2.0])
        want = temperature_update(m[step]["rollout/temperature"], m[step]["rollout/entropy"],
                                  m[step]["rollout/target_entropy"], VOCAB)
        assert m[step + 1]["rollout/temperature"] == pytest.approx(min(2.0, max(0.5, want)), rel=1e-6)


def test_controller_state_is_checkpointed_and_a_resumed_run_makes_the_same_next_decision(runs):
    a, b = runs["a"], runs["b"]
    ckpt = a["dir"] / "checkpoints"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    for step in (3, 4):
        folder = ckpt / f"global_step_{step}"
        assert (folder / "e3_controller.pt").is_file() and (folder / "actor").is_dir() and \
            (folder / "data.pt").is_file()
    assert sorted(b["metrics"]) == [4]  # resumed after step 3
    assert b["metrics"][4]["rollout/temperature"] == pytest.approx(a["metrics"][4]["rollout/temperature"], rel=1e-9)
    first = Counter(r["prompt"] for r in sampled(a, 4))
    again = Counter(r["prompt"] for r in sampled(b, 4))
    assert again == first  # the same prompts, each with the same n_i
    assert {r["temperature"] for r in sampled(b, 4)} == {r["temperature"] for r in sampled(a, 4)}
    assert np.isfinite(b["metrics"][4]["actor/entropy"])


def test_validation_logs_the_unbiased_pass_at_k_that_verls_dump_gives(runs):
    from math import comb

    from e3.tasks.arithmetic import score

    a, n = runs["a"], 4
    m = a["metrics"][4]  # the last step's record: the step's metrics and its validation's
    # verl's dump of that validation: one row per sample, keyed {uid}_{session}_{index}; a problem is its uid
    rows = read_jsonl(a["dir"] / "validation" / "4.jsonl")
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["uid"].rsplit("_", 2)[0], []).append(row)
    assert len(groups) == 64 and {len(g) for g in groups.values()} == {n}  # cpu_tiny.val_size x val_kwargs.n
    assert all(len({r["input"] for r in g}) == 1 for g in groups.values())  # a problem's samples share its prompt
    for row in rows:  # each sample's acc is the task's verdict on its own output
        assert row["acc"] == score(row["output"].strip(), str(row["gts"]).strip())
    correct = [sum(r["acc"] for r in g) for g in groups.values()]
    assert 0 < sum(correct) < len(rows)
    for k in (1, 2, 4):  # Chen et al. 2021 Eq. 1 per problem, in exact integers, averaged over problems
        want = float(np.mean([1 - comb(n - c, k) / comb(n, k) for c in correct]))
        assert m[f"val/pass@{k}"] == pytest.approx(want, abs=1e-12), k
        assert m[f"val/pass@{k}/e3_tiny_arith"] == pytest.approx(want, abs=1e-12), k
    assert m["val/pass@1"] <= m["val/pass@2"] <= m["val/pass@4"]
    assert m["val/pass@1"] == pytest.approx(m["val/accuracy"]) == pytest.approx(sum(correct) / len(rows))
    assert "val/pass@8" not in m and "val/pass@16" not in m  # e3.validation.pass_k's K above n are skipped
    assert (m["val/problems"], m["val/samples"], m["val/temperature"]) == (64, 64 * n, 1.0)
    # verl's own best@4 (a bootstrap with replacement) sits below the unbiased pass@4 whenever a problem is mixed
    mixed = any(0 < c < n for c in correct)
    best = m["val-core/e3_tiny_arith/acc/best@4/mean"]
    assert best < m["val/pass@4"] if mixed else best <= m["val/pass@4"]
    # the validation was sampled at T = 1.0 with the weights after step 4 (none of the training steps' requests)
    requests = [r for r in a["requests"] if r["weights_version"] == 4]
    assert len(requests) == 64 * n and {r["temperature"] for r in requests} == {1.0}
    assert "val pass@k (unbiased): step 4: pass@1" in runs["stdout"]
    assert "mean of 4 samples per problem at T=1" in runs["stdout"]
