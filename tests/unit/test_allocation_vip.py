"""The "vip" allocation policy: the convex program's KKT conditions, the integer rounding rule and its optimality,
the Beta-posterior predictor, registration, and the state round trip through the allocator."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.allocation import vip
from e3.allocation.allocator import RolloutAllocator
from e3.allocation.registry import registered_policies, resolve_policy
from e3.allocation.vip import (
    VIPPolicy,
    allocate_vip,
    bernoulli_variance,
    continuous_allocation,
    variance_objective,
)
from e3.schema import E3Config


@st.composite
def problem(draw, max_size=40):
    size = draw(st.integers(1, max_size))
    n_min = draw(st.integers(2, 6))
    n_max = draw(st.integers(n_min, n_min + 30))
    levels = draw(st.lists(st.floats(0.0, 0.25), min_size=1, max_size=4))  # repeated weights: ties
    w = np.array(draw(st.lists(st.sampled_from(levels), min_size=size, max_size=size)))
    total = draw(st.integers(size * n_min, size * n_max))
    return w, total, n_min, n_max


@settings(max_examples=300, deadline=None)
@given(problem())
def test_continuous_solution_meets_the_kkt_conditions(prob):
    w, total, n_min, n_max = prob
    x, lam = continuous_allocation(w, total, n_min, n_max)
    assert x.sum() == pytest.approx(total, rel=1e-12, abs=1e-9)
    assert np.all(x >= n_min - 1e-12) and np.all(x <= n_max + 1e-12)
    marginal = w / (x - 1.0) ** 2  # the variance reduction per extra rollout, d/dn of -w / (n - 1)
    inside = (x > n_min + 1e-9) & (x < n_max - 1e-9) & (w > 0)
    if inside.any():
        np.testing.assert_allclose(marginal[inside], lam, rtol=1e-9)  # equalised across prompts not at a cap
        assert np.all(marginal[(x >= n_max - 1e-9) & (w > 0)] >= lam * (1 - 1e-9))
        assert np.all(marginal[x <= n_min + 1e-9] <= lam * (1 + 1e-9))


def test_without_binding_caps_the_extra_rollouts_follow_the_square_root_of_the_variance():
    w = np.array([0.01, 0.04, 0.09, 0.16])
    x, lam = continuous_allocation(w, 4 * 20, 2, 100)
    np.testing.assert_allclose((x - 1) / np.sqrt(w), 1 / np.sqrt(lam))  # n_i - 1 = sqrt(w_i / lam)
    assert x.sum() == pytest.approx(80)


@settings(max_examples=200, deadline=None)
@given(problem(max_size=4).filter(lambda p: p[3] - p[2] <= 5))
def test_integer_budgets_reach_the_brute_force_optimum(prob):
    w, total, n_min, n_max = prob
    n = allocate_vip(w, total, n_min, n_max)
    best = min(variance_objective(c, w) for c in itertools.product(range(n_min, n_max + 1), repeat=w.size)
               if sum(c) == total)
    assert variance_objective(n, w) == pytest.approx(best, rel=1e-12, abs=1e-15)


@settings(max_examples=300, deadline=None)
@given(problem())
def test_integer_budgets_meet_the_budget_caps_and_the_exchange_condition(prob):
    w, total, n_min, n_max = prob
    n = allocate_vip(w, total, n_min, n_max)
    assert n.dtype == np.int64 and n.sum() == total and n.min() >= n_min and n.max() <= n_max
    up, down = n < n_max, n > n_min
    if up.any() and down.any():  # no rollout moved from one prompt to another lowers the objective
        gain_next = w[up] / ((n[up] - 1.0) * n[up])
        gain_last = w[down] / ((n[down] - 2.0) * (n[down] - 1.0))
        assert gain_next.max() <= gain_last.min()


def test_the_rounding_rule_gives_equal_prompts_even_budgets_extra_ones_to_the_earlier():
    n = allocate_vip(np.full(5, 0.2), 5 * 6 + 3, 2, 12)
    assert n.tolist() == [7, 7, 7, 6, 6]
    # prompts that cannot mix (w = 0) only take what the others cannot: here nothing
    assert allocate_vip(np.array([0.0, 0.2, 0.0, 0.2]), 16, 2, 12).tolist() == [2, 6, 2, 6]
    # all indifferent: the even split, the remainder to the earlier prompts
    assert allocate_vip(np.zeros(3), 13, 2, 12).tolist() == [5, 4, 4]


def test_the_checked_fallback_gives_the_same_budgets(monkeypatch):
    rng = np.random.default_rng(0)
    w = bernoulli_variance(rng.integers(0, 9, 200).astype(float), np.full(200, 8.0))
    fast = allocate_vip(w, 200 * 8, 2, 128)
    monkeypatch.setattr(vip, "_optimal", lambda *args: False)
    np.testing.assert_array_equal(allocate_vip(w, 200 * 8, 2, 128), fast)


def test_bernoulli_variance_is_the_beta_posterior_expectation():
    assert bernoulli_variance([0.0], [0.0])[0] == pytest.approx(1 / 6)  # E[p(1-p)] under Beta(1, 1)
    a, b = 1 + 3.0, 1 + 5.0
    assert bernoulli_variance([3.0], [8.0])[0] == pytest.approx(a * b / ((a + b) * (a + b + 1)))
    draws = np.random.default_rng(1).beta(a, b, 400_000)
    assert bernoulli_variance([3.0], [8.0])[0] == pytest.approx(np.mean(draws * (1 - draws)), rel=1e-2)
    with pytest.raises(ValueError, match="successes"):
        bernoulli_variance([5.0], [3.0])
    with pytest.raises(ValueError, match="weights"):
        allocate_vip([-1.0, 0.2], 8, 2, 6)
    with pytest.raises(ValueError, match="total"):
        allocate_vip([0.1, 0.2], 3, 2, 6)


def test_policy_registered_and_selectable_in_config():
    assert "vip" in registered_policies() and resolve_policy("vip") is VIPPolicy
    cfg = E3Config.from_dict({"allocation": {"policy": "vip"}})
    alloc = RolloutAllocator.from_config(cfg.allocation, 8)
    prompts = np.arange(4)
    for _ in range(2):  # 0 always right, 1 always wrong, 2 and 3 half right
        alloc.observe(np.repeat(prompts, 8), np.concatenate([np.ones(8), np.zeros(8), np.tile([0, 1], 8)]))
        alloc.end_epoch(prompts)
    n = alloc.allocate(prompts, 32)
    assert n.sum() == 32 and n.min() >= 4 and n.max() <= 12
    assert n[2] > n[0] and n[3] > n[1] and n[2] == n[3]
    m = alloc.metrics()
    assert 0 < m["allocation/vip/variance_vs_even"] <= 1 and m["allocation/vip/mean_weight"] > 0


def test_state_round_trip_gives_the_same_decisions():
    """The policy reads the tracker's records (no state of its own): a checkpointed allocator, restored through
    JSON, decides exactly as the uninterrupted one."""
    prompts = np.arange(40)

    def step(alloc, seed):
        n = alloc.allocate(prompts, 40 * 8)
        r = np.random.default_rng(seed).random(int(n.sum())) < np.repeat(np.linspace(0.05, 0.95, 40), n)
        alloc.observe(np.repeat(prompts, n), r.astype(float))
        return n

    a = RolloutAllocator(8, "vip", n_update=4, n_low=2, n_high=16)
    for seed in range(3):
        step(a, seed)
        a.end_epoch(prompts)
    assert a.allocation_policy.state_dict() == {}
    b = RolloutAllocator(8, "vip", n_update=4, n_low=2, n_high=16)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for seed in range(3, 6):
        np.testing.assert_array_equal(step(a, seed), step(b, seed))
    assert not np.all(step(a, 9) == 8)  # budgets did move away from the even split
