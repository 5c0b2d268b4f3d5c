"""E3 in verl 0.9.1's colocate_async trainer, for real on the CPU (``verl_cpu_tiny_async``), read from the runs' files.

Two runs (``verl_cpu_async_runs.py``): 6 steps, and a resume from its step-3 checkpoint. What is asserted comes
from what verl and the rollout wrote: verl's metrics (its off-policy statistics included) and the hf rollout's
request log (one line per sampled request segment with the weights version and the temperature it was sampled at).
What this CPU run cannot show: partial rollouts resumed across a weight update (a CPU generation of 64 responses of
at most 6 tokens finishes before the trainer's sampling ends, so verl's abort finds nothing running; the abort /
resume path itself is tested against verl's real client in tests/contract/test_verl_cpu_plugin.py), and trained
batches that mix two dispatches' temperatures (with nothing left running, every trained batch is one dispatch).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from e3.engines.verl.cpu.tiny import training_steps
from e3.io import read_jsonl

pytestmark = pytest.mark.slow

B, N, STEPS = 8, 8, 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl_cpu_async")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("verl_cpu_async_runs.py")), str(root)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"runs failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {name: {"dir": root / name, "metrics": training_steps(root / name),
                   "requests": read_jsonl(root / name / "requests.jsonl")} for name in ("a", "b")}


def test_the_asynchronous_trainer_ran(runs):
    m = runs["a"]["metrics"]
    assert sorted(m) == list(range(1, STEPS + 1))
    # verl's own off-policy statistics: some trained batches were sampled by weights older than the ones trained
    assert max(s["training/off_policy/trajectory_staleness/max"] for s in m.values()) >= 1
    # the batch trained at step t was dispatched before it (one batch in flight ahead)
    assert all(s["rollout/tau_lag/mean"] >= 1 for t, s in m.items() if t > 1)


def test_budgets_planned_sampled_and_trained_agree(runs):
    m, requests = runs["a"]["metrics"], runs["a"]["requests"]
    for s in m.values():
        assert s["rollout/n_total"] == B * N and s["rollout/n_trained_total"] == B * N
        assert s["rollout/n_failed"] == 0
    # every dispatched prompt was sampled n_i = 8 times: requests per prompt (and weights version) are multiples of 8
    per_prompt = Counter((r["weights_version"], tuple(r["prompt_ids"])) for r in requests if r["temperature"] > 0)
    assert per_prompt and all(c % N == 0 for c in per_prompt.values())


def test_each_group_is_observed_once(runs):
    m = runs["a"]["metrics"]
    # 64 distinct prompts, 8 trained per step, none twice within the first epoch: the tracker sees 8 new each step
    assert [m[t]["difficulty/prompts_seen"] for t in sorted(m)] == [B * t for t in sorted(m)]


def test_requests_are_sampled_at_the_planned_tau_and_trained_at_their_own(runs):
    m, requests = runs["a"]["metrics"], runs["a"]["requests"]
    planned = {round(s["rollout/dispatch_temperature"], 12) for s in m.values()} | {1.0}  # tau_0 dispatched first
    taus = {round(r["temperature"], 12) for r in requests if r["temperature"] > 0}
    assert taus <= planned and len(taus) > 1  # the scheduler moved tau and each dispatch used the planned value
    # the tau a step trained (mean over its rollouts) is one the controller planned for an earlier dispatch
    assert all(round(s["rollout/temperature"], 12) in planned for s in m.values())
    # rollouts sampled by the very weights being trained (staleness 0, one span): sampler and actor log-probs
    # agree token by token within float error at each rollout's own tau, also where that tau is not 1
    fresh = [s for s in m.values() if s["training/off_policy/trajectory_staleness/max"] == 0
             and s["training/off_policy/trajectory_spans/max"] == 1]
    assert fresh and any(abs(s["rollout/temperature"] - 1.0) > 1e-3 for s in fresh)
    for s in fresh:
        assert s["training/rollout_probs_diff_max"] < 1e-5, s["training/rollout_probs_diff_max"]
    stale = [s for s in m.values() if s["training/off_policy/trajectory_staleness/max"] >= 1]
    assert max(s["training/rollout_probs_diff_max"] for s in stale) > 1e-4  # the check above can see a difference


def test_a_resumed_run_makes_the_same_next_decision(runs):
    a, b = runs["a"], runs["b"]
    assert (a["dir"] / "checkpoints" / "global_step_3" / "e3_controller.pt").is_file()
    assert sorted(b["metrics"]) == [4, 5, 6]
    # the first decision after the resume: the tau planned for the step-4 dispatch, and the tau step 4 trained at
    # (the in-flight batch dispatched at step 3, restored with its budgets and tau)
    for key in ("rollout/dispatch_temperature", "rollout/temperature", "rollout/n_trained_total"):
        assert b["metrics"][4][key] == pytest.approx(a["metrics"][4][key], rel=1e-12), key
