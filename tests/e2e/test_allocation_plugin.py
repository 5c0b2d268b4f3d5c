"""End to end: a user's own allocation policy and the knapsack and vip policies drive real local-engine training
steps.

The user's module is written to a temporary directory, put on ``sys.path`` and selected by config only
(``e3.allocation.policy=user_policies:Alternating``): nothing in the project is edited or registered.
"""

import sys
import textwrap

import pytest

from e3.engines.local import checkpoint as ckpt
from e3.engines.local.engine import run

from test_local_engine import tiny as base_tiny

USER_MODULE = '''
import numpy as np
from e3.allocation.policy import AllocationPolicy


class Alternating(AllocationPolicy):
    """Batch positions 0, 2, 4, ... get n_max while the total lasts, the rest share what is left evenly."""

    def __init__(self, tracker, seed=0):
        super().__init__(tracker, seed)
        self.calls, self.rewards_seen = 0, 0

    def allocate(self, indices, total, n_min, n_max):
        self.calls += 1
        n = np.full(len(indices), n_min, dtype=np.int64)
        spare = total - n.sum()
        for i in list(range(0, len(n), 2)) + list(range(1, len(n), 2)):
            take = min(spare, n_max - n_min)
            n[i] += take
            spare -= take
        return n

    def observe(self, indices, rewards):
        self.rewards_seen += len(rewards)

    def state_dict(self):
        return {"calls": self.calls, "rewards_seen": self.rewards_seen}

    def load_state_dict(self, state):
        self.calls, self.rewards_seen = state["calls"], state["rewards_seen"]

    def metrics(self):
        return {"alternating/calls": self.calls}
'''


@pytest.fixture(scope="module")
def ws_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("warm_start_cache"))


def tiny(ws_cache, policy: str, steps: int = 5) -> dict:
    """The engine tests' tiny run (24 training prompts, batch 8 x n = 4: an epoch is 3 steps, then caps [2,6]) with
    ``policy`` allocating, ``steps`` steps and one validation at the end."""
    return base_tiny(ws_cache, task={"val_size": 20}, val={"n_samples": 1}, e3={"allocation": {"policy": policy}},
                     trainer={"total_steps": steps, "save_every": steps, "val_every": steps})


def test_a_users_policy_module_selected_by_config_drives_local_training(tmp_path, ws_cache, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "user_policies.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    sys.modules.pop("user_policies", None)
    res = run(tiny(ws_cache, "user_policies:Alternating"), run_dir=str(tmp_path / "run"),
              quiet=True)
    steps = [m for m in res.metrics if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5]
    for m in steps[:3]:  # epoch 1: the schedule keeps the caps at [4, 4]
        assert m["rollout/n_hist"] == [4] * 8
    for m in steps[3:]:  # caps [2, 6] after the epoch end: the user's pattern, sum 32
        assert m["rollout/n_hist"] == [6, 2, 6, 2, 6, 2, 6, 2]
        assert m["rollout/n_total"] == 32
    assert [m["allocation/alternating/calls"] for m in steps] == [1, 2, 3, 4, 5]
    state = ckpt.load(res.checkpoint)["controller"]["allocator"]["policy"]
    assert state == {"name": "user_policies:Alternating", "state": {"calls": 5, "rewards_seen": 3 * 32 + 2 * 32}}


def checked_steps(res, count: int) -> list[dict]:
    """The run's training steps, each budget checked: sum 32, every prompt within the step's caps."""
    steps = [m for m in res.metrics if m["step"] > 0]
    assert len(steps) == count
    for m in steps:
        n = m["rollout/n_hist"]
        assert m["rollout/n_total"] == sum(n) == 32 and all(m["rollout/n_min"] <= x <= m["rollout/n_max"] for x in n)
    return steps


def test_knapsack_policy_drives_local_training(tmp_path, ws_cache):
    res = run(tiny(ws_cache, "knapsack", steps=6), run_dir=str(tmp_path / "run"), quiet=True)
    steps = checked_steps(res, 6)
    assert all("allocation/knapsack/zero_value_prompts" in m for m in steps)
    later = steps[3:]  # every prompt has a record after epoch 1 (3 steps x 8 = all 24 prompts)
    assert all(m["allocation/knapsack/unseen_prompts"] == 0.0 for m in later)
    assert any(len(set(m["rollout/n_hist"])) > 1 for m in later)
    # prompts the last group found hopeless or solved get n_min unless every other prompt is at n_max
    for m in later:
        zero = round(m["allocation/knapsack/zero_value_prompts"] * 8)
        if 0 < zero < 8 and max(m["rollout/n_hist"]) < 6:
            assert m["allocation/knapsack/zero_value_extra_rollouts"] == 0
            assert sorted(m["rollout/n_hist"])[:zero] == [2] * zero
    records = ckpt.load(res.checkpoint)["controller"]["allocator"]["policy"]
    assert records["name"] == "knapsack" and sorted(records["state"]["keys"]) == list(range(24))


def test_vip_policy_drives_local_training(tmp_path, ws_cache):
    res = run(tiny(ws_cache, "vip", steps=6), run_dir=str(tmp_path / "run"), quiet=True)
    for m in checked_steps(res, 6):  # its budgets never do worse on its own objective than the even split
        assert 0 < m["allocation/vip/variance_vs_even"] <= 1 + 1e-12 and m["allocation/vip/mean_weight"] > 0
    records = ckpt.load(res.checkpoint)["controller"]["allocator"]
    assert records["policy"] == {"name": "vip", "state": {}}  # it reads the tracker, checkpointed beside it
    assert len(records["tracker"]["keys"]) == 24
