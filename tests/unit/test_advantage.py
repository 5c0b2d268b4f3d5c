"""GRPO advantages over groups of unequal size (std with N-1, eps), and E3's optional length bias."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e3.advantage import grpo_advantages, length_bias_scores


def test_one_group_by_hand():
    # scores [1, 0, 0, 1]: mean 0.5, std (N-1) = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5773502691896257
    # A = +-0.5 / (0.5773502691896257 + 1e-6) = +-0.8660239436...
    a = grpo_advantages([1.0, 0.0, 0.0, 1.0], [7, 7, 7, 7])
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert expected == pytest.approx(0.86602390, abs=1e-8)
    np.testing.assert_allclose(a, [expected, -expected, -expected, expected], rtol=0, atol=1e-15)


def test_eps_is_added_to_the_std():
    # same group with eps = 0.5: 0.5 / (0.57735 + 0.5) = 0.46410161513775455
    a = grpo_advantages([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0], eps=0.5)
    assert a[0] == pytest.approx(0.5 / (math.sqrt(1 / 3) + 0.5), abs=1e-15)
    assert a[0] == pytest.approx(0.46410161513775455, abs=1e-12)


def test_unequal_interleaved_groups_by_hand():
    # group "a" (3 rollouts) [1, 0, 0]: mean 1/3, deviations [2/3, -1/3, -1/3], var (4/9 + 1/9 + 1/9) / 2 = 1/3
    #   -> A = [2/3, -1/3, -1/3] / (0.57735... + 1e-6) = [1.15470, -0.57735, -0.57735]
    # group "b" (5 rollouts) [0, 1, 1, 1, 0.5]: mean 0.7, deviations [-.7, .3, .3, .3, -.2]
    #   var (0.49 + 3 * 0.09 + 0.04) / 4 = 0.2, std = 0.4472135955 -> A = dev / (0.4472135955 + 1e-6)
    scores = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5]
    ids = ["a", "b", "a", "b", "b", "a", "b", "b"]
    a = grpo_advantages(scores, ids)
    sa, sb = math.sqrt(1 / 3) + 1e-6, math.sqrt(0.2) + 1e-6
    expected = [2 / 3 / sa, -0.7 / sb, -1 / 3 / sa, 0.3 / sb, 0.3 / sb, -1 / 3 / sa, 0.3 / sb, -0.2 / sb]
    np.testing.assert_allclose(a, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.7, 1e-3])
def test_all_equal_group_gets_zero(value):
    # 0.1 * 5 does not sum exactly: (s - mean) is ~1e-17, and so is the std; the advantage must still be 0, not +-1e-11
    a = grpo_advantages([value] * 5 + [1.0, 0.0], [0] * 5 + [1, 1])
    assert a[:5].tolist() == [0.0] * 5
    assert abs(a[5]) > 0.5


def test_singleton_group_gets_zero():
    a = grpo_advantages([1.0, 0.3, 1.0, 0.0], [0, 1, 2, 2])
    assert a[0] == 0.0 and a[1] == 0.0  # verl would return the raw score here
    assert a[2] == pytest.approx(-a[3]) and a[2] > 0


def test_empty_and_mismatch():
    assert grpo_advantages([], []).shape == (0,)
    with pytest.raises(ValueError, match="3 scores but 2 group ids"):
        grpo_advantages([1.0, 0.0, 1.0], [0, 0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0.0, 1.0, 0.5])), min_size=1, max_size=60))
def test_advantages_sum_to_zero_in_each_group_and_match_definition(rows):
    ids, scores = map(np.asarray, zip(*rows))
    a = grpo_advantages(scores, ids)
    for g in np.unique(ids):
        s = scores[ids == g]
        assert a[ids == g].sum() == pytest.approx(0.0, abs=1e-9)
        if s.size >= 2 and s.min() != s.max():
            np.testing.assert_allclose(a[ids == g], (s - s.mean()) / (s.std(ddof=1) + 1e-6), atol=1e-12)
        else:
            assert np.all(a[ids == g] == 0.0)


def test_length_bias_by_hand():
    # mu = 0.001, threshold 0.1: only correct rollouts of prompts with k <= 0.1 change, to 1 - mu*l / (1 + mu*l)
    # l = 100 -> 1 - 0.1/1.1 = 0.9090909; l = 1000 -> 1 - 1/2 = 0.5; wrong stays 0; k = 0.5 stays 1
    s = length_bias_scores([1.0, 1.0, 0.0, 1.0], lengths=[100, 1000, 50, 200], difficulty=[0.05, 0.1, 0.05, 0.5],
                           coeff=0.001, threshold=0.1)
    np.testing.assert_allclose(s, [1 / 1.1, 0.5, 0.0, 1.0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="2 scores, 1 lengths, 2 difficulties"):
        length_bias_scores([1.0, 0.0], [10], [0.0, 0.0])


def test_length_bias_does_not_modify_input():
    scores = np.array([1.0, 1.0])
    length_bias_scores(scores, [100, 200], [0.0, 0.0])
    assert scores.tolist() == [1.0, 1.0]


def test_dr_grpo_subtracts_the_group_mean_without_the_std():
    # Dr. GRPO: group "a" [1, 0, 0] -> [2/3, -1/3, -1/3]; group "b" [1, 0] -> [0.5, -0.5]; equal group -> 0
    a = grpo_advantages([1.0, 0.0, 1.0, 0.0, 0.0, 0.3, 0.3], ["a", "a", "b", "a", "b", "c", "c"], norm_by_std=False)
    np.testing.assert_allclose(a, [2 / 3, -1 / 3, 0.5, -1 / 3, -0.5, 0.0, 0.0], rtol=0, atol=1e-15)
    assert grpo_advantages([0.7], ["x"], norm_by_std=False).tolist() == [0.0]  # singleton: 0, as with the std
    assert not np.allclose(a, grpo_advantages([1.0, 0.0, 1.0, 0.0, 0.0, 0.3, 0.3], ["a", "a", "b", "a", "b", "c", "c"]))
