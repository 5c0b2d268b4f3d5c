"""The "knapsack" policy (Knapsack RL, arXiv 2509.25849): value function, exact solver, the paper's properties."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.allocation.allocator import DifficultyTracker, RolloutAllocator
from e3.allocation.knapsack import KnapsackPolicy, allocate_knapsack, info_gain
from e3.allocation.separable import allocate_max_separable_dp
from roundtrip import torch_roundtrip  # noqa: E402  (tests/ on sys.path, as in test_allocation.py)


def knapsack_value(n, p):
    """The paper's Value(N, p) = (1 - p^N - (1 - p)^N) p (1 - p)^2, elementwise: what the solver must maximise."""
    n = np.asarray(n, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return (1.0 - p ** n - (1.0 - p) ** n) * p * (1.0 - p) ** 2


def value_table(p, n_min, n_max):
    """values[i, k] = Value(n_min + k, p_i), the table the general DP takes."""
    ns = np.arange(n_min, n_max + 1)
    return knapsack_value(ns[None, :], np.asarray(p, dtype=np.float64).ravel()[:, None])


def objective(p, n):
    return float(knapsack_value(np.asarray(n), np.asarray(p)).sum())


def brute_force(p, total, n_min, n_max):
    best = -np.inf
    for combo in itertools.product(range(n_min, n_max + 1), repeat=len(p)):
        if sum(combo) == total:
            best = max(best, objective(p, combo))
    return best


# ---------------------------------------------------------------- the value function


def test_value_is_prob_mixed_times_info_gain_by_hand():
    # N = 4, p = 1/2: P(mixed) = 1 - 2/16 = 7/8; InfoGain = 1/2 * 1/4 = 1/8 -> 7/64
    assert knapsack_value(4, 0.5) == pytest.approx(7 / 64)
    # N = 2, p = 0.1: P(mixed) = 1 - 0.01 - 0.81 = 0.18; InfoGain = 0.1 * 0.81 = 0.081
    assert knapsack_value(2, 0.1) == pytest.approx(0.18 * 0.081)
    assert info_gain(1 / 3) == pytest.approx(4 / 27)  # the maximum of p (1 - p)^2
    grid = np.linspace(0, 1, 1001)
    assert grid[np.argmax(info_gain(grid))] == pytest.approx(1 / 3, abs=1e-3)
    assert knapsack_value(np.arange(2, 129), 0.0).max() == 0 and knapsack_value(np.arange(2, 129), 1.0).max() == 0


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0, allow_nan=False))
def test_value_is_concave_in_n_so_taking_the_largest_increments_is_exact(p):
    v = knapsack_value(np.arange(2, 130), p)
    inc = np.diff(v)
    assert np.all(inc >= -1e-15)
    assert np.all(np.diff(inc) <= 1e-15)


# ---------------------------------------------------------------- exact solution


@st.composite
def small_problem(draw):
    size = draw(st.integers(1, 4))
    n_min = draw(st.integers(2, 4))
    n_max = draw(st.integers(n_min, n_min + 6))
    total = draw(st.integers(size * n_min, size * n_max))
    p = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0, allow_nan=False)),
                      min_size=size, max_size=size))
    return np.array(p), total, n_min, n_max


@settings(max_examples=200, deadline=None)
@given(small_problem())
def test_reaches_the_brute_force_optimum(problem):
    p, total, n_min, n_max = problem
    n = allocate_knapsack(p, total, n_min, n_max)
    assert n.dtype == np.int64 and n.sum() == total and n.min() >= n_min and n.max() <= n_max
    assert objective(p, n) == pytest.approx(brute_force(p, total, n_min, n_max), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("caps", [(4, 12), (2, 32), (2, 128)])
def test_agrees_with_the_general_dp_on_batches_of_64(caps):
    rng = np.random.default_rng(sum(caps))
    lo, hi = caps
    for _ in range(5):
        p = rng.random(64)
        p[rng.random(64) < 0.25] = 0.0
        p[rng.random(64) < 0.25] = 1.0
        n = allocate_knapsack(p, 64 * 8, lo, hi)
        dp = allocate_max_separable_dp(value_table(p, lo, hi), 64 * 8, lo, hi)
        assert objective(p, n) == pytest.approx(objective(p, dp), rel=1e-12)


# ---------------------------------------------------------------- the paper's worked properties


def test_hopeless_and_solved_prompts_get_the_minimum_and_the_rest_goes_to_solvable_ones():
    p = np.array([0.0, 1.0, 0.05, 0.3, 0.6, 0.95, 0.0, 1.0])
    n = allocate_knapsack(p, 8 * 8, 2, 128)
    assert n.sum() == 64
    assert n[[0, 1, 6, 7]].tolist() == [2, 2, 2, 2]
    # the extra budget goes to hard-but-solvable prompts first: n falls as p rises over the solvable ones
    assert n[2] > n[3] > n[4] > n[5] >= 2
    assert n[2] == n.max() and n[2] >= 20


def test_a_hard_prompt_among_many_edge_cases_gets_a_large_budget():
    # 60 prompts solved or hopeless, 4 hard-but-solvable ones: budgets of tens of rollouts become affordable
    # (the paper: up to 93 for especially challenging problems)
    p = np.concatenate([np.zeros(30), np.ones(30), [0.02, 0.05, 0.1, 0.2]])
    n = allocate_knapsack(p, 64 * 8, 2, 128)
    assert n[:60].tolist() == [2] * 60
    assert n[60:].sum() == 512 - 120 and n[60] == 128 and n[61] == 128
    assert n[60] >= n[61] >= n[62] >= n[63] > 8


def test_spare_budget_past_every_cap_goes_to_unsolved_then_solved_prompts_evenly():
    # p = 0.5 can take 2 more; the value-0 prompts only receive what nobody else can use
    assert allocate_knapsack([0.5, 0.0, 0.0, 1.0], 14, 2, 4).tolist() == [4, 4, 4, 2]
    assert allocate_knapsack([0.5, 0.0, 0.0, 1.0], 15, 2, 4).tolist() == [4, 4, 4, 3]
    assert allocate_knapsack([0.5, 0.0, 0.0, 1.0], 11, 2, 4).tolist() == [4, 3, 2, 2]


def test_ties_are_deterministic_and_spread_evenly():
    assert allocate_knapsack(np.full(4, 0.5), 4 * 4 + 2, 2, 8).tolist() == [5, 5, 4, 4]
    assert allocate_knapsack(np.zeros(3), 10, 2, 6).tolist() == [4, 3, 3]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="pass rates"):
        allocate_knapsack([0.5, 1.5], 8, 2, 6)
    with pytest.raises(ValueError, match="budget cannot be met"):
        allocate_knapsack([0.5, 0.5], 3, 2, 6)


# ---------------------------------------------------------------- the policy on the interface


def feed(alloc, groups: dict):
    """One step: prompt -> list of rewards."""
    idx = np.concatenate([[k] * len(v) for k, v in groups.items()])
    alloc.observe(idx, np.concatenate([v for v in groups.values()]).astype(float))


def test_policy_estimates_from_the_last_group_and_gives_unseen_prompts_the_uniform_share():
    alloc = RolloutAllocator(8, "knapsack", n_low=2, n_high=32, n_update=24)
    feed(alloc, {0: [0] * 8, 1: [1] * 8, 2: [1, 0, 0, 0, 0, 0, 0, 0], 3: [1, 1, 1, 1, 0, 0, 0, 0]})
    alloc.end_epoch(np.arange(10))
    assert (alloc.schedule.n_min, alloc.schedule.n_max) == (2, 32)
    pol = alloc.allocation_policy
    p, seen = pol.pass_rates([0, 1, 2, 3, 9])
    assert p.tolist() == [0.0, 1.0, 0.125, 0.5, 0.0] and seen.tolist() == [True] * 4 + [False]
    n = alloc.allocate(np.array([0, 1, 2, 3, 9]), 40)
    assert n[4] == 8  # unseen: the uniform share of 40 / 5
    assert n[:4].tolist() == allocate_knapsack([0.0, 1.0, 0.125, 0.5], 32, 2, 32).tolist()
    assert n[0] == n[1] == 2 and n[2] > n[3]
    m = alloc.metrics()
    assert m["allocation/knapsack/zero_value_prompts"] == pytest.approx(2 / 5)
    assert m["allocation/knapsack/unseen_prompts"] == pytest.approx(1 / 5)
    # a new group replaces the old estimate: prompt 0 was hopeless, now half right
    feed(alloc, {0: [1, 0]})
    assert pol.pass_rates([0])[0].tolist() == [0.5]


def test_cumulative_estimator_is_a_subclass_away():
    class Cumulative(KnapsackPolicy):
        estimator = "cumulative"

    tracker = DifficultyTracker()
    cumulative, last = Cumulative(tracker), KnapsackPolicy(tracker)
    for rewards in ([0.0] * 4, [1.0, 1.0, 0.0, 0.0]):
        tracker.observe([5] * 4, rewards)
        for pol in (cumulative, last):
            pol.observe(np.array([5] * 4), np.array(rewards))
    assert cumulative.pass_rates([5])[0].tolist() == [0.25]  # 2 of 8 rollouts so far
    assert last.pass_rates([5])[0].tolist() == [0.5]  # 2 of the last group's 4

    class Wrong(KnapsackPolicy):
        estimator = "ema"

    with pytest.raises(ValueError, match="estimator must be one of"):
        Wrong(tracker)


def test_state_round_trip_gives_identical_next_decisions():
    rng = np.random.default_rng(3)
    a = RolloutAllocator(8, "knapsack", n_low=2, n_high=16, n_update=8)
    prompts = np.arange(32)
    for _ in range(2):
        n = a.allocate(prompts)
        a.observe(np.repeat(prompts, n), (rng.random(n.sum()) < 0.4).astype(float))
        a.end_epoch(prompts)
    state = torch_roundtrip(a.state_dict())
    json.dumps(state)
    b = RolloutAllocator(8, "knapsack", n_low=2, n_high=16, n_update=8)
    b.load_state_dict(state)
    for batch in (prompts[:16], prompts[16:]):
        assert a.allocate(batch).tolist() == b.allocate(batch).tolist()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.sampled_from([(4, 12), (2, 32), (2, 128)]), st.integers(0, 10 ** 6))
def test_invariants_through_the_allocator(size, caps, seed):
    rng = np.random.default_rng(seed)
    lo, hi = caps
    a = RolloutAllocator(8, "knapsack", n_low=lo, n_high=hi, n_update=hi)
    prompts = np.arange(size)
    seen = prompts[rng.random(size) < 0.7]
    if seen.size:
        reps = rng.integers(1, 9, seen.size)
        a.observe(np.repeat(seen, reps), (rng.random(reps.sum()) < rng.random()).astype(float))
    a.end_epoch(prompts)
    total = int(rng.integers(size * lo, size * hi + 1))
    n = a.allocate(prompts, total)
    assert n.sum() == total and n.min() >= lo and n.max() <= hi
