"""Unbiased pass@k (Chen et al. 2021, Eq. 1) and E3's group statistics."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.metrics import group_stats, pass_at_k


def exact_pass_at_k(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@st.composite
def nck(draw):
    n = draw(st.integers(1, 200))
    c = draw(st.integers(0, n))
    k = draw(st.integers(1, n))
    return n, c, k


@settings(max_examples=300, deadline=None)
@given(nck())
def test_pass_at_k_matches_binomial_formula(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-12, abs=1e-13)


def test_pass_at_k_by_hand():
    # n = 10, c = 3, k = 2: 1 - C(7,2)/C(10,2) = 1 - 21/45 = 0.5333...
    assert pass_at_k(10, 3, 2) == pytest.approx(24 / 45, abs=1e-15)
    # k = 1 is the plain accuracy c / n
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16, abs=1e-15)
    # n = k: 1 if any correct
    assert pass_at_k(8, 1, 8) == 1.0


def test_pass_at_k_exact_edges():
    assert pass_at_k(200, 0, 1) == 0.0 and pass_at_k(200, 0, 200) == 0.0  # c = 0 -> exactly 0
    assert pass_at_k(200, 200, 1) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c = 2 < k = 3 -> exactly 1
    assert pass_at_k(10, 7, 3) < 1.0  # n - c = 3 = k: one all-wrong subset
    assert pass_at_k(10, 7, 3) == pytest.approx(1 - 1 / 120, abs=1e-15)  # C(3,3)/C(10,3) = 1/120


def test_pass_at_k_vectorised_shapes():
    n = np.array([[10, 10, 4], [8, 16, 16]])
    c = np.array([[0, 3, 4], [1, 2, 16]])
    out = pass_at_k(n, c, 2)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert out[i, j] == pytest.approx(exact_pass_at_k(int(n[i, j]), int(c[i, j]), 2), abs=1e-14)
    # scalar n broadcast over a vector of c
    np.testing.assert_allclose(pass_at_k(8, [0, 1, 8], 1), [0.0, 1 / 8, 1.0])
    assert isinstance(pass_at_k(8, 2, 1), float)


def test_k_above_n_raises_naming_the_position():
    with pytest.raises(ValueError, match=r"k=5 > n=4 samples at position 2"):
        pass_at_k([8, 8, 4, 8], [1, 2, 3, 4], 5)
    with pytest.raises(ValueError, match=r"c=9 > n=8 at position 1"):
        pass_at_k([8, 8], [1, 9], 1)
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(8, 1, 0)
    with pytest.raises(ValueError, match="non-negative"):
        pass_at_k([8, -1], [1, 0], 1)


def test_group_stats_by_hand():
    # groups: 0 = [1, 1] all correct; 1 = [0, 0, 0] all wrong; 2 = [1, 0, 0, 1] mixed; 3 = [0, 1] mixed
    scores = [1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 1]
    ids = [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    s = group_stats(scores, ids)
    assert s["num_groups"] == 4
    assert s["all_correct"] == 0.25 and s["all_wrong"] == 0.25
    assert s["informative_groups"] == 0.5
    assert s["informative_rollouts"] == 6 / 11  # 4 + 2 of 11 rollouts are in mixed groups


def test_group_stats_threshold_and_unordered_ids():
    # threshold 0.5: 0.3 counts as wrong. groups "x" = [0.3, 0.9] mixed, "y" = [0.2, 0.5] all wrong (0.5 is not > 0.5)
    s = group_stats([0.3, 0.2, 0.9, 0.5], ["x", "y", "x", "y"], threshold=0.5)
    assert (s["all_correct"], s["all_wrong"], s["informative_rollouts"]) == (0.0, 0.5, 0.5)


def test_group_stats_empty_and_mismatch():
    s = group_stats([], [])
    assert s["num_groups"] == 0 and s["all_correct"] == 0.0 and s["informative_rollouts"] == 0.0
    with pytest.raises(ValueError, match="2 scores but 3 group ids"):
        group_stats([1, 0], [0, 0, 1])
