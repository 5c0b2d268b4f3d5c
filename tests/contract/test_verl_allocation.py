"""Contract: allocation policies on verl 0.9.1's path, and DAPO group filtering refused with its reason.

1. A user's policy module (written to a temporary directory, put on ``sys.path``, a ``KnapsackPolicy`` subclass)
   selected only by ``e3.allocation.policy=user_alloc:CumulativeKnapsack`` drives ``E3Trainer`` inside verl's real
   ``fit`` loop (see ``verl_harness``: only the LLM server and the GPU workers are replaced; 6 steps, batch 4 x n = 4,
   an epoch ends after step 4): the budgets the rollout server serves are the policy's answers, the policy observes
   every trained rollout, its metrics reach verl's logger and its state is in the checkpoint's ``e3_controller.pt``.
2. verl 0.9.1's v1 trainer would turn DAPO's ``algorithm.filter_groups`` on for our config (its own resolver accepts
   it), and ``E3Trainer`` refuses it before anything starts, naming the key.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from e3.data import write_rows  # noqa: E402

from .verl_harness import ScriptedServer, arithmetic_rows, assemble, build_tiny_model  # noqa: E402
from .verl_harness import compose as harness_compose  # noqa: E402

B, N = 4, 4
SPEC = "user_alloc:CumulativeKnapsack"
USER_MODULE = '''
from e3.allocation.knapsack import KnapsackPolicy


class CumulativeKnapsack(KnapsackPolicy):
    """Knapsack RL on the cumulative pass rate; remembers what it was asked and answered."""

    estimator = "cumulative"

    def __init__(self, tracker, seed=0):
        super().__init__(tracker, seed)
        self.answers, self.observed = [], 0

    def allocate(self, indices, total, n_min, n_max):
        n = super().allocate(indices, total, n_min, n_max)
        self.answers.append((indices.tolist(), n.tolist(), (n_min, n_max)))
        return n

    def observe(self, indices, rewards):
        super().observe(indices, rewards)
        self.observed += len(rewards)
'''


def compose(workdir, *extra):
    """The harness's tiny run (B x N, 6 steps over 2 epochs), one checkpoint at the end."""
    return harness_compose(workdir, "trainer.save_freq=6", "trainer.test_freq=6", "trainer.logger=[console,file]",
                           *extra, batch=B, n=N)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("verl_alloc")
    build_tiny_model(root / "model")
    write_rows(arithmetic_rows(16, "train"), root / "train.parquet")
    write_rows(arithmetic_rows(4, "valid", start=100), root / "valid.parquet")
    (root / "user").mkdir()
    (root / "user" / "user_alloc.py").write_text(textwrap.dedent(USER_MODULE))
    return root


def test_filter_groups_is_refused_before_anything_starts_naming_the_key(workdir):
    from e3.engines.verl.trainer import E3Trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    cfg = compose(workdir, "algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=acc")
    # the premise: verl 0.9.1's own v1 trainer accepts this and would build its replay buffer with DAPO filtering
    assert PPOTrainerSync._resolve_filter_groups_metric(SimpleNamespace(config=cfg)) == "acc"
    with pytest.raises(ValueError, match=r"^algorithm\.filter_groups\.enable=true \(DAPO dynamic sampling\) cannot "
                                         r"run with the e3 trainer: .*sum of n_i .*difficulty records"):
        E3Trainer(cfg)
    # off (verl's default) is accepted
    from e3.engines.verl.trainer import check_supported, e3_config_from

    plain = compose(workdir)
    assert plain.algorithm.filter_groups.enable is False
    check_supported(plain, e3_config_from(plain))


def test_the_policy_is_resolved_in_the_drivers_preflight(workdir, monkeypatch):
    from e3.engines.verl.trainer import check_supported, e3_config_from

    bad = compose(workdir, "e3.allocation.policy=user_alloc:Nope")
    with pytest.raises(ValueError, match=r"e3\.allocation\.policy='user_alloc:Nope': cannot import module 'user_alloc'"):
        check_supported(bad, e3_config_from(bad))
    monkeypatch.syspath_prepend(str(workdir / "user"))
    sys.modules.pop("user_alloc", None)
    with pytest.raises(ValueError, match=r"module 'user_alloc' has no attribute 'Nope'"):
        check_supported(bad, e3_config_from(bad))
    good = compose(workdir, f"e3.allocation.policy={SPEC}")
    check_supported(good, e3_config_from(good))
    sys.modules.pop("user_alloc", None)


@pytest.fixture(scope="module")
def run(cluster, workdir, tmp_path_factory):
    from transformers import AutoTokenizer

    from e3.engines.verl.trainer import E3Trainer

    env = pytest.MonkeyPatch()
    env.syspath_prepend(str(workdir / "user"))
    sys.modules.pop("user_alloc", None)
    logdir = tmp_path_factory.mktemp("logs")
    env.setenv("VERL_FILE_LOGGER_PATH", str(logdir / "metrics.jsonl"))

    class Spy(E3Trainer):
        def __init__(self, config, server):
            super().__init__(config)
            self.server, self.plans = server, []

        def _next_train_batch(self, num_prompts=None):
            batch = super()._next_train_batch(num_prompts)
            self.plans.append({"first_request": len(self.server.requests),
                               "index": [int(i) for i in batch["index"]], "n": batch["__rollout_n__"].tolist()})
            return batch

    try:
        server = ScriptedServer(AutoTokenizer.from_pretrained(workdir / "model"))
        trainer = Spy(compose(workdir, f"e3.allocation.policy={SPEC}"), server)
        trainer.fit(assemble(trainer, workdir / "model", server))
        logged = [json.loads(line) for line in open(logdir / "metrics.jsonl")]
        yield {"trainer": trainer, "server": server, "logged": logged, "workdir": workdir}
    finally:
        env.undo()
        sys.modules.pop("user_alloc", None)


@pytest.mark.slow
def test_a_users_policy_module_drives_the_verl_trainer(run):
    trainer, server = run["trainer"], run["server"]
    policy = trainer.controller.allocator.allocation_policy
    assert type(policy).__name__ == "CumulativeKnapsack" and policy.estimator == "cumulative"
    plans = trainer.plans
    assert len(plans) == 6 and len(policy.answers) == 6
    ends = [p["first_request"] for p in plans[1:]] + [len(server.requests)]
    for plan, (asked, answer, caps), end in zip(plans, policy.answers, ends):
        assert plan["index"] == asked and plan["n"] == answer and sum(answer) == B * N
        served = Counter(k for k, _ in server.requests[plan["first_request"]:end])
        assert [served[k] for k in plan["index"]] == plan["n"]  # the server sampled exactly the policy's budgets
    assert [a[2] for a in policy.answers] == [(4, 4)] * 4 + [(2, 6)] * 2  # caps widen at the epoch end (step 4)
    assert policy.observed == 6 * B * N
    # after the epoch, hopeless-so-far prompts (the server never answers q<k> with k % 4 == 0 correctly) get n_min
    # while any other prompt is below n_max
    for asked, answer, _ in policy.answers[4:]:
        if max(answer) < 6:
            assert all(n == 2 for k, n in zip(asked, answer) if k % 4 == 0)
    assert any(len(set(answer)) > 1 for _, answer, _ in policy.answers[4:])


@pytest.mark.slow
def test_policy_metrics_reach_verls_logger_and_state_reaches_the_checkpoint(run):
    import torch

    steps = {rec["step"]: rec["data"] for rec in run["logged"] if "rollout/n_total" in rec["data"]}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for data in steps.values():
        assert "allocation/knapsack/zero_value_prompts" in data and data["rollout/n_total"] == B * N
    state = torch.load(run["workdir"] / "ckpt" / "global_step_6" / "e3_controller.pt", weights_only=False)
    saved = state["controller"]["allocator"]["policy"]
    assert saved["name"] == SPEC and saved["state"]["estimator"] == "cumulative"
    tracker = run["trainer"].controller.allocator.tracker
    assert int(np.sum(tracker.counts(range(16)))) == 6 * B * N
