"""The exact separable solver: the structured search equals the reference DP (same optimum, same allocation under the
tie rule) and brute force, on random tables with unimodal increments, on the informative policy's own tables and on
tables the search does not apply to."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.allocation import separable
from e3.allocation.informative import pass_rate_table, posterior_table
from e3.allocation.separable import (
    allocate_grouped,
    allocate_max_separable,
    allocate_max_separable_dp,
    grid_table,
)


def brute_force(table, total, n_min, n_max):
    """(best value, the optimal allocation whose last prompt is smallest, then the one before, ...)."""
    size = table.shape[0]
    best, pick = None, None
    for combo in itertools.product(range(n_min, n_max + 1), repeat=size):
        if sum(combo) != total:
            continue
        value = int(sum(table[i, n - n_min] for i, n in enumerate(combo)))
        key = tuple(reversed(combo))
        if best is None or value > best or (value == best and key < pick):
            best, pick = value, key
    return best, list(reversed(pick))


@st.composite
def unimodal_row(draw, width):
    """Integer row with unimodal increments (rising, then falling), small values so that ties are common."""
    steps = sorted(draw(st.lists(st.integers(-3, 6), min_size=width - 1, max_size=width - 1)), reverse=True)
    if not steps:
        return [draw(st.integers(-5, 5))]
    k = draw(st.integers(0, len(steps) - 1))
    d = sorted(steps[1:1 + k]) + [steps[0]] + steps[1 + k:]
    return np.concatenate([[0], np.cumsum(d)]) + draw(st.integers(-5, 5))


@st.composite
def unimodal_problem(draw, max_size=5, max_width=6):
    n_min = draw(st.integers(2, 4))
    width = draw(st.integers(1, max_width))
    n_max = n_min + width - 1
    distinct = draw(st.lists(unimodal_row(width), min_size=1, max_size=3))
    size = draw(st.integers(1, max_size))
    which = draw(st.lists(st.integers(0, len(distinct) - 1), min_size=size, max_size=size))
    table = np.array([distinct[w] for w in which], dtype=np.float64).reshape(size, width)
    total = draw(st.integers(size * n_min, size * n_max))
    return table, total, n_min, n_max


@settings(max_examples=300, deadline=None)
@given(unimodal_problem())
def test_structured_search_equals_brute_force(problem):
    table, total, n_min, n_max = problem
    grid = grid_table(table)
    best, pick = brute_force(grid, total, n_min, n_max)
    n = allocate_max_separable(table, total, n_min, n_max)
    assert int(grid[np.arange(len(n)), n - n_min].sum()) == best
    assert n.tolist() == pick
    assert allocate_max_separable_dp(table, total, n_min, n_max).tolist() == pick


@settings(max_examples=200, deadline=None)
@given(unimodal_problem(max_size=40, max_width=14))
def test_structured_search_equals_the_reference_dp(problem):
    table, total, n_min, n_max = problem
    np.testing.assert_array_equal(allocate_max_separable(table, total, n_min, n_max),
                                  allocate_max_separable_dp(table, total, n_min, n_max))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(2, 4), st.integers(1, 5), st.data())
def test_tables_without_unimodal_increments_are_solved_exactly_too(size, n_min, width, data):
    n_max = n_min + width - 1
    table = np.array(data.draw(st.lists(st.lists(st.integers(-9, 9), min_size=width, max_size=width),
                                        min_size=size, max_size=size)), dtype=np.float64)
    total = data.draw(st.integers(size * n_min, size * n_max))
    best, pick = brute_force(grid_table(table), total, n_min, n_max)
    assert allocate_max_separable(table, total, n_min, n_max).tolist() == pick


def test_the_structured_search_answers_unimodal_tables_without_the_dp(monkeypatch):
    def no_dp(*args):
        raise AssertionError("the reference DP ran")

    rng = np.random.default_rng(3)
    s = rng.integers(0, 9, 300).astype(float)
    table = posterior_table(s, np.full(300, 8.0), 2, 128)
    expected = allocate_max_separable_dp(table, 300 * 8, 2, 128)
    monkeypatch.setattr(separable, "_dp", no_dp)
    np.testing.assert_array_equal(allocate_max_separable(table, 300 * 8, 2, 128), expected)


def test_a_search_wider_than_the_limit_goes_to_the_dp(monkeypatch):
    rng = np.random.default_rng(4)
    table = pass_rate_table(rng.beta(0.5, 0.5, 48), 2, 40)
    expected = allocate_max_separable(table, 48 * 8, 2, 40)
    calls, dp = [], separable._dp
    monkeypatch.setattr(separable, "SEARCH_LIMIT", 0)
    monkeypatch.setattr(separable, "_dp", lambda *args: calls.append(1) or dp(*args))
    np.testing.assert_array_equal(allocate_max_separable(table, 48 * 8, 2, 40), expected)
    assert calls


@pytest.mark.parametrize("n_min, n_max", [(4, 12), (2, 32), (2, 128), (6, 10)])
@pytest.mark.parametrize("seed", range(4))
def test_informative_tables_match_the_reference_dp(n_min, n_max, seed):
    """The policy's own tables: records of one group of 8 (a few classes), records after a second step (many),
    and known pass rates, both discrete (E3's levels) and continuous (every prompt its own class)."""
    rng = np.random.default_rng([seed, n_max])
    size = 64
    p = rng.choice(np.arange(11) / 10, size)
    s = rng.binomial(8, p).astype(float)
    c = np.full(size, 8.0)
    extra = rng.integers(n_min, n_max + 1, size)
    tables = [posterior_table(s, c, n_min, n_max), posterior_table(s + rng.binomial(extra, p), c + extra, n_min, n_max),
              pass_rate_table(p, n_min, n_max), pass_rate_table(rng.beta(0.5, 0.5, size), n_min, n_max)]
    for table in tables:
        for total in (size * 8, int(rng.integers(size * n_min, size * n_max + 1))):
            np.testing.assert_array_equal(allocate_max_separable(table, total, n_min, n_max),
                                          allocate_max_separable_dp(table, total, n_min, n_max))


def test_grouped_rows_give_the_same_answer_as_the_full_table():
    rng = np.random.default_rng(5)
    rows = posterior_table(np.arange(9.0), np.full(9, 8.0), 2, 32)
    inverse = rng.integers(0, 9, 100)
    np.testing.assert_array_equal(allocate_grouped(rows, inverse, 800, 2, 32),
                                  allocate_max_separable(rows[inverse], 800, 2, 32))
    few = inverse % 3 + 5  # rows 0-4 unused (and row 8 the largest): the grid follows the rows in use
    np.testing.assert_array_equal(allocate_grouped(rows, few, 800, 2, 32), allocate_max_separable(rows[few], 800, 2, 32))
    with pytest.raises(ValueError, match="inverse"):
        allocate_grouped(rows, np.array([0, 9]), 16, 2, 32)


def test_grid_keeps_increments_unimodal_and_values_close():
    """Rounding each increment (not each value) to the grid keeps their order, so a unimodal row stays unimodal;
    the table stays close to the values and any one-per-prompt sum is below 2^GRID_BITS plus the rounding."""
    p = np.linspace(0.0, 1.0, 41)
    values = pass_rate_table(p, 2, 128)
    grid = grid_table(values, size=512)
    d = np.diff(grid, axis=1)
    peak = np.argmax(d, axis=1)
    for row, k in zip(d, peak):
        assert np.all(np.diff(row[:k + 1]) >= 0) and np.all(np.diff(row[k:]) <= 0)
    unit = 512 * np.abs(values).max() / 2.0 ** separable.GRID_BITS  # at most twice the grid step
    np.testing.assert_allclose(grid * (np.abs(values).max() / grid.max()), values, atol=128 * unit)
    assert 512 * int(np.abs(grid).max()) <= 2 ** separable.GRID_BITS + 512 * 127 // 2


def test_group_rows_finds_identical_rows_in_order_of_first_appearance():
    table = np.array([[3, 1], [0, 0], [3, 1], [5, 5], [0, 0]], dtype=np.int64)
    rows, inverse = separable._group_rows(table)
    assert rows.tolist() == [[3, 1], [0, 0], [5, 5]] and inverse.tolist() == [0, 1, 0, 2, 1]
