"""The allocation-policy plug-in point: the registry and import graph, selection by name or module path, checked
answers, state for resume."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from e3.allocation.allocator import RolloutAllocator
from e3.allocation.e3 import E3Policy
from e3.allocation.informative import InformativePolicy
from e3.allocation.knapsack import KnapsackPolicy
from e3.allocation.policy import AllocationPolicy, check_allocation
from e3.allocation.registry import build_policy, register_policy, registered_policies, resolve_policy
from e3.allocation.uniform import UniformPolicy
from e3.allocation.vip import VIPPolicy
from e3.schema import E3Config
from e3.controller import E3Controller

USER_MODULE = '''
"""A user's own policies, outside the project."""
import numpy as np
from e3.allocation.policy import AllocationPolicy


class FrontLoaded(AllocationPolicy):
    """Budget by batch position: the first prompts get n_max while the total lasts; counts its calls."""

    def __init__(self, tracker, seed=0):
        super().__init__(tracker, seed)
        self.calls, self.seen = 0, 0

    def allocate(self, indices, total, n_min, n_max):
        self.calls += 1
        n = np.full(len(indices), n_min, dtype=np.int64)
        spare = total - n.sum()
        for i in range(len(n)):
            take = min(spare, n_max - n_min)
            n[i] += take
            spare -= take
        return n

    def observe(self, indices, rewards):
        self.seen += len(rewards)

    def state_dict(self):
        return {"calls": self.calls, "seen": self.seen}

    def load_state_dict(self, state):
        self.calls, self.seen = state["calls"], state["seen"]

    def metrics(self):
        return {"front/calls": self.calls}


def half_and_half(tracker, indices, total, n_min, n_max):
    n = np.full(len(indices), total // len(indices), dtype=np.int64)
    n[: total - n.sum()] += 1
    return n


class Broken(AllocationPolicy):
    mode = "sum"

    def allocate(self, indices, total, n_min, n_max):
        n = np.full(len(indices), n_min, dtype=np.int64)
        if self.mode == "sum":
            return n  # forgets the spare budget
        if self.mode == "cap":
            n[0] = n_max + 1
            n[1:] = n_min
            n[-1] += total - n.sum()
            return n
        if self.mode == "float":
            return n.astype(float)
        if self.mode == "length":
            return n[:-1]
        return None


class NotAPolicy:
    pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_policies.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_policies", None)
    yield "my_policies"
    sys.modules.pop("my_policies", None)


def test_the_registry_holds_the_five_built_in_policies_by_name():
    assert registered_policies()[:5] == ["e3", "uniform", "informative", "knapsack", "vip"]
    assert {name: resolve_policy(name) for name in registered_policies()[:5]} == {
        "e3": E3Policy, "uniform": UniformPolicy, "informative": InformativePolicy, "knapsack": KnapsackPolicy,
        "vip": VIPPolicy}


def _allocation_modules_after(statement):
    """The ``e3.allocation`` modules a fresh interpreter holds after running ``statement``."""
    code = (f"import json, sys; {statement}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('e3.allocation'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_the_base_module_imports_no_policy_and_no_policy_imports_the_registry():
    assert _allocation_modules_after("import e3.allocation.policy") == {"e3.allocation", "e3.allocation.policy"}
    for name in ("uniform", "e3", "informative", "knapsack", "vip", "separable"):
        loaded = _allocation_modules_after(f"import e3.allocation.{name}")
        assert not loaded & {"e3.allocation.registry", "e3.allocation.allocator"}, (name, loaded)
        if name != "e3":
            assert "e3.allocation.e3" not in loaded, (name, loaded)
    # the check sees what an import loads: the registry's explicit table pulls in every built-in policy
    assert _allocation_modules_after("import e3.allocation.registry") >= {
        f"e3.allocation.{name}" for name in ("policy", "uniform", "e3", "informative", "knapsack", "vip")}


def test_user_module_policy_selected_by_config(user_module):
    cfg = E3Config.from_dict({"allocation": {"policy": "my_policies:FrontLoaded", "n_low": 2, "n_high": 6}})
    ctl = E3Controller(cfg, n=4, vocab_size=16, max_steps=10, dataset_indices=np.arange(6))
    assert type(ctl.allocator.allocation_policy).__name__ == "FrontLoaded"
    ctl.allocator.end_epoch(np.arange(6))
    ctl.allocator.end_epoch(np.arange(6))  # caps 4 -> [2,6] after two epochs
    plan = ctl.plan(np.arange(6))
    assert plan.n_per_prompt.tolist() == [6, 6, 6, 2, 2, 2]  # sum 24 = 6 x 4
    metrics = ctl.observe(plan.rollout_indices(), np.zeros(24), entropy=1.0)
    assert metrics["allocation/front/calls"] == 1
    assert ctl.allocator.allocation_policy.seen == 24


def test_plain_function_is_a_stateless_policy(user_module):
    alloc = RolloutAllocator(4, "my_policies:half_and_half", n_low=2, n_high=6)
    alloc.end_epoch(np.arange(3))
    assert alloc.allocate(np.arange(3), 13).tolist() == [5, 4, 4]
    assert alloc.state_dict()["policy"] == {"name": "my_policies:half_and_half", "state": {}}


def test_register_policy_by_name_and_as_decorator():
    @register_policy("test_everyone_min_plus")
    class Reverse(AllocationPolicy):
        def allocate(self, indices, total, n_min, n_max):
            n = np.full(len(indices), n_min, dtype=np.int64)
            n[-1] += total - n.sum()
            return n

    assert "test_everyone_min_plus" in registered_policies()
    alloc = RolloutAllocator(4, "test_everyone_min_plus", n_low=4, n_high=4)
    assert alloc.allocate(np.arange(3)).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="without ':'"):
        register_policy("a:b", Reverse)


@pytest.mark.parametrize("spec, message", [
    ("nope", r"e3\.allocation\.policy='nope': unknown allocation policy 'nope' \(registered: e3, uniform"),
    ("", r"e3\.allocation\.policy must be a non-empty string"),
    ("no_such_module_xyz:Policy", r"e3\.allocation\.policy='no_such_module_xyz:Policy': cannot import module "
                                  r"'no_such_module_xyz': ModuleNotFoundError"),
    ("my_policies:Missing", r"module 'my_policies' has no attribute 'Missing'"),
    ("my_policies:NotAPolicy", r"NotAPolicy is not a subclass of e3\.allocation\.policy\.AllocationPolicy"),
    ("my_policies:", r"expected 'module\.path:ClassName'"),
])
def test_bad_policy_fails_when_the_allocator_is_built_naming_the_key(user_module, spec, message):
    with pytest.raises(ValueError, match=message):
        RolloutAllocator(8, spec)


def test_config_accepts_any_name_and_the_controller_validates_it():
    cfg = E3Config.from_dict({"allocation": {"policy": "greedy"}})  # a string: the config cannot know the registry
    with pytest.raises(ValueError, match=r"e3\.allocation\.policy='greedy': unknown allocation policy"):
        E3Controller(cfg, n=8, vocab_size=16, max_steps=10)


@pytest.mark.parametrize("mode, message", [
    ("sum", r"allocation policy 'my_policies:Broken' \(e3\.allocation\.policy\) returned budgets summing to 12, "
            r"but this step's total is 24"),
    ("cap", r"gave prompt 0 of the batch 7 rollouts, outside the step's bounds \[n_min, n_max\] = \[2, 6\]"),
    ("float", r"returned float64 budgets; rollout counts must be integers"),
    ("length", r"returned shape \(5,\) for a batch of 6 prompts"),
    ("none", r"returned None"),
])
def test_every_answer_is_checked_and_a_wrong_one_names_the_policy(user_module, mode, message):
    alloc = RolloutAllocator(4, "my_policies:Broken", n_low=2, n_high=6, n_update=2)
    alloc.allocation_policy.mode = mode
    alloc.end_epoch(np.arange(6))
    with pytest.raises(ValueError, match=message):
        alloc.allocate(np.arange(6), 24)


def test_check_allocation_accepts_integer_answers_of_any_width():
    n = check_allocation(np.array([3, 5], dtype=np.int32), "x", 2, 8, 2, 6)
    assert n.dtype == np.int64 and n.tolist() == [3, 5]
    assert check_allocation([4, 4], "x", 2, 8, 2, 6).tolist() == [4, 4]
    with pytest.raises(ValueError, match="bool"):
        check_allocation(np.array([True, True]), "x", 2, 2, 1, 1)


def test_infeasible_budget_is_refused_before_the_policy_is_asked(user_module):
    alloc = RolloutAllocator(4, "my_policies:FrontLoaded", n_low=2, n_high=6)
    with pytest.raises(ValueError, match="budget cannot be met"):
        alloc.allocate(np.arange(3), 5)
    assert alloc.allocation_policy.calls == 0
    assert alloc.allocate(np.empty(0, dtype=np.int64), 0).tolist() == []
    assert alloc.allocation_policy.calls == 0


def test_policy_state_round_trips_through_json_and_is_restored(user_module):
    alloc = RolloutAllocator(4, "my_policies:FrontLoaded", n_low=2, n_high=6)
    alloc.allocate(np.arange(3))
    alloc.observe(np.repeat(np.arange(3), 4), np.ones(12))
    state = json.loads(json.dumps(alloc.state_dict()))
    fresh = RolloutAllocator(4, "my_policies:FrontLoaded", n_low=2, n_high=6)
    fresh.load_state_dict(state)
    assert (fresh.allocation_policy.calls, fresh.allocation_policy.seen) == (1, 12)
    # a checkpoint of another policy (or one written before policies had state) restores tracker and schedule only
    other = RolloutAllocator(4, "e3", n_low=2, n_high=6)
    other.load_state_dict(state)
    legacy = {k: v for k, v in state.items() if k != "policy"}
    fresh2 = RolloutAllocator(4, "my_policies:FrontLoaded", n_low=2, n_high=6)
    fresh2.load_state_dict(legacy)
    assert fresh2.allocation_policy.calls == 0 and fresh2.tracker.counts([0]).tolist() == [4]


def test_constructor_failure_names_the_key(user_module):
    with pytest.raises(ValueError, match=r"e3\.allocation\.policy='my_policies:FrontLoaded': constructing "
                                         r"FrontLoaded\(tracker, seed=not a number\) failed: ValueError"):
        build_policy("my_policies:FrontLoaded", tracker=None, seed="not a number")
