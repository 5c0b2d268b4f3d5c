"""The "informative" allocation policy: exact optimum (vs brute force), E3's invariants, registration, ties."""

import heapq
import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from e3.allocation.allocator import RolloutAllocator
from e3.allocation.informative import (
    allocate_for_pass_rates,
    allocate_informative,
    expected_informative,
    informative_fraction,
    pass_rate_table,
    posterior_table,
)
from e3.allocation.policy import check_budget
from e3.allocation.registry import registered_policies
from e3.allocation.separable import allocate_max_separable
from e3.schema import E3Config


def brute_force(values, total, n_min, n_max):
    best = -np.inf
    for combo in itertools.product(range(n_min, n_max + 1), repeat=values.shape[0]):
        if sum(combo) == total:
            best = max(best, sum(values[i, n - n_min] for i, n in enumerate(combo)))
    return best


def objective(values, n, n_min):
    return float(values[np.arange(len(n)), np.asarray(n) - n_min].sum())


def greedy_allocation(values, total, n_min, n_max):
    """Heap greedy on marginal gains from n_min (exact only for tables with non-increasing increments)."""
    values = np.asarray(values, dtype=np.float64)
    size = values.shape[0]
    check_budget(size, total, n_min, n_max)
    n = np.full(size, n_min, dtype=np.int64)
    heap = [(-(values[i, 1] - values[i, 0]), i) for i in range(size) if n_max > n_min]
    heapq.heapify(heap)
    for _ in range(int(total) - size * n_min):
        _, i = heapq.heappop(heap)
        n[i] += 1
        k = n[i] - n_min
        if n[i] < n_max:
            heapq.heappush(heap, (-(values[i, k + 1] - values[i, k]), i))
    return n


@st.composite
def small_problem(draw):
    size = draw(st.integers(1, 4))
    n_min = draw(st.integers(2, 5))
    n_max = draw(st.integers(n_min, n_min + 5))
    total = draw(st.integers(size * n_min, size * n_max))
    return size, n_min, n_max, total


rates = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(small_problem(), st.lists(rates, min_size=4, max_size=4))
@example((3, 2, 6, 12), [0.5, 0.95, 0.7, 0.0])  # greedy on marginal gains loses here
def test_known_pass_rates_reach_brute_force_optimum(problem, p):
    size, n_min, n_max, total = problem
    p = np.array(p[:size])
    n = allocate_for_pass_rates(p, total, n_min, n_max)
    table = pass_rate_table(p, n_min, n_max)
    assert objective(table, n, n_min) == pytest.approx(brute_force(table, total, n_min, n_max), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(small_problem(), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=4, max_size=4))
@example((2, 2, 7, 13), [(18, 6), (13, 8), (0, 0), (0, 0)])  # greedy on marginal gains loses here
def test_tracker_estimates_reach_brute_force_optimum(problem, history):
    size, n_min, n_max, total = problem
    counts = np.array([c for c, _ in history[:size]], dtype=float)
    successes = np.array([min(s, c) for c, s in history[:size]], dtype=float)
    n = allocate_informative(successes, counts, total, n_min, n_max)
    table = posterior_table(successes, counts, n_min, n_max)
    assert objective(table, n, n_min) == pytest.approx(brute_force(table, total, n_min, n_max), abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(small_problem(), st.lists(st.lists(st.floats(0, 5), min_size=6, max_size=6), min_size=4, max_size=4))
def test_greedy_is_exact_on_concave_tables(problem, increments):
    size, n_min, n_max, total = problem
    width = n_max - n_min + 1
    # non-increasing increments -> concave rows
    rows = [np.concatenate([[0.0], np.cumsum(sorted(inc[:width - 1], reverse=True))]) for inc in increments[:size]]
    table = np.array(rows).reshape(size, width)
    best = brute_force(table, total, n_min, n_max)
    assert objective(table, greedy_allocation(table, total, n_min, n_max), n_min) == pytest.approx(best, abs=1e-9)
    assert objective(table, allocate_max_separable(table, total, n_min, n_max), n_min) == pytest.approx(best, abs=1e-9)


def test_objective_is_not_concave_so_greedy_can_lose():
    n = np.arange(2, 13)
    for p in (0.1, 0.3, 0.9):
        assert np.any(np.diff(expected_informative(n, p), 2) > 1e-12), p  # increments rise somewhere
    p = np.array([0.5, 0.95, 0.7])
    table = pass_rate_table(p, 2, 6)
    greedy = objective(table, greedy_allocation(table, 12, 2, 6), 2)
    exact = objective(table, allocate_for_pass_rates(p, 12, 2, 6), 2)
    assert exact == pytest.approx(brute_force(table, 12, 2, 6))
    assert exact > greedy + 1e-3


def test_expected_informative_matches_simulation():
    rng = np.random.default_rng(0)
    p, n = np.array([0.1, 0.5, 0.9, 0.0]), np.array([4, 8, 12, 6])
    draws = rng.random((20000, 4, 12)) < p[None, :, None]
    mask = np.arange(12)[None, :] < n[:, None]
    c = (draws & mask).sum(axis=2)
    mixed = ((c > 0) & (c < n)).mean(axis=0) * n
    np.testing.assert_allclose(expected_informative(n, p), mixed, atol=0.1)
    assert expected_informative(n, p)[3] == 0.0
    assert informative_fraction(n, p) == pytest.approx(expected_informative(n, p).sum() / n.sum())


def test_posterior_predictive_of_unseen_prompt():
    table = posterior_table([0.0], [0.0], 2, 6)  # uniform prior: P(mixed) = (n - 1) / (n + 1)
    n = np.arange(2, 7)
    np.testing.assert_allclose(table[0], n * (n - 1) / (n + 1))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.integers(2, 8), st.integers(0, 24), st.data())
def test_invariants_like_e3(size, n_min, extra, data):
    n_max = n_min + extra
    total = data.draw(st.integers(size * n_min, size * n_max))
    counts = np.array(data.draw(st.lists(st.integers(0, 40), min_size=size, max_size=size)), dtype=float)
    frac = np.array(data.draw(st.lists(st.floats(0, 1), min_size=size, max_size=size)))
    successes = np.floor(frac * counts)
    n = allocate_informative(successes, counts, total, n_min, n_max)
    assert n.dtype == np.int64 and n.shape == (size,)
    assert n.sum() == total
    assert n.min() >= n_min >= 2 and n.max() <= n_max
    np.testing.assert_array_equal(n, allocate_informative(successes, counts, total, n_min, n_max))


@pytest.mark.parametrize("total, n_min, n_max", [(5, 2, 4), (13, 2, 4), (8, 1, 4), (8, 4, 3)])
def test_infeasible_budget_raises(total, n_min, n_max):
    with pytest.raises(ValueError, match="n_min|n_max|total"):
        allocate_informative(np.zeros(3), np.zeros(3), total, n_min, n_max)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="successes"):
        allocate_informative([5.0], [3.0], 4, 2, 6)
    with pytest.raises(ValueError, match="pass rates"):
        allocate_for_pass_rates([1.5, 0.2], 8, 2, 6)
    with pytest.raises(ValueError, match="table"):
        allocate_max_separable(np.zeros((2, 3)), 8, 2, 6)


def test_ties_are_deterministic_and_favour_earlier_prompts():
    assert allocate_informative(np.zeros(3), np.zeros(3), 13, 4, 5).tolist() == [5, 4, 4]
    n = allocate_for_pass_rates(np.full(5, 0.5), 5 * 6 + 3, 4, 12)
    assert n.tolist() == [7, 7, 7, 6, 6]
    # unseen prompts: f(n) = n - 2 + 2/(n+1) is convex, so the exact optimum is all-or-nothing (documented)
    assert allocate_informative(np.zeros(8), np.zeros(8), 64, 4, 12).tolist() == [12] * 4 + [4] * 4


def test_policy_registered_and_selectable_in_config():
    assert "informative" in registered_policies()
    cfg = E3Config.from_dict({"allocation": {"policy": "informative"}})
    alloc = RolloutAllocator.from_config(cfg.allocation, 8)
    prompts = np.arange(4)
    # history: 0 always right, 1 always wrong, 2 and 3 half right
    for _ in range(2):
        alloc.observe(np.repeat(prompts, 8), np.concatenate([np.ones(8), np.zeros(8), np.tile([0, 1], 8)]))
        alloc.end_epoch(prompts)
    assert (alloc.schedule.n_min, alloc.schedule.n_max) == (4, 12)
    n = alloc.allocate(prompts, 32)
    assert n.sum() == 32 and n.min() >= 4 and n.max() <= 12
    assert n[2] > n[0] and n[2] > n[1] and n[3] > n[0] and n[3] > n[1]
    assert alloc.metrics()["rollout/n_total"] == 32


def test_a_table_of_subnormal_values_is_solved_without_nans():
    table = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 2.5]]) * 1e-320  # the snapping grid would underflow to 0
    with np.errstate(all="raise"):
        n = allocate_max_separable(table, 8, 3, 5)
    assert n.sum() == 8 and n.min() >= 3 and n.max() <= 5
