"""E3's validation metrics for verl (``e3.engines.verl.validation``): the unbiased val/pass@K on hand-worked groups.

The inputs have the shape verl 0.9.1's ``_validate`` hands to ``_val_metrics_update``: one entry per sample in
``data_sources`` / ``sample_uids``, and ``reward_extra_infos_dict`` with ``reward`` and the reward function's extra
fields (``acc``, ``score``), ``None`` where a sample's reward function gave none. The real run is
``tests/e2e/test_verl_cpu.py``; here the numbers are worked out by hand.
"""

from __future__ import annotations

import logging
import math

import pytest
from omegaconf import OmegaConf

from e3.schema import E3Config
from e3.engines.verl.validation import validation_metrics


def config(n=4, temperature=1.0, do_sample=True, pass_k=None):
    cfg = {"actor_rollout_ref": {"rollout": {"val_kwargs": {"n": n, "temperature": temperature,
                                                            "do_sample": do_sample}}}}
    if pass_k is not None:
        cfg["e3"] = {"validation": {"pass_k": pass_k}}
    return OmegaConf.create(cfg)


def batch(groups: dict):
    """``{(source, uid): [acc, ...]}`` -> verl's per-sample lists (samples of a problem adjacent, as verl has them)."""
    sources, uids, acc = [], [], []
    for (source, uid), values in groups.items():
        sources += [source] * len(values)
        uids += [uid] * len(values)
        acc += list(values)
    return sources, uids, {"reward": [float(a) for a in acc], "score": [float(a) for a in acc], "acc": acc}


def test_one_correct_of_four_is_a_quarter_a_half_and_one():
    sources, uids, infos = batch({("math", "u1"): [0, 1, 0, 0]})
    m = validation_metrics(config(n=4), sources, uids, infos)
    # 1 - C(3, k) / C(4, k): k=1 -> 1 - 3/4, k=2 -> 1 - 3/6, k=4 -> 1 - 0 (verl's best@4 reads 1 - (3/4)^4 = 0.684)
    assert m["val/pass@1"] == pytest.approx(0.25)
    assert m["val/pass@2"] == pytest.approx(0.5)
    assert m["val/pass@4"] == pytest.approx(1.0)
    assert m["val/pass@4/math"] == pytest.approx(1.0)
    assert "val/pass@8" not in m and "val/pass@16" not in m  # the default list [1, 2, 4, 8, 16]: K > n = 4 skipped
    assert m["val/accuracy"] == pytest.approx(0.25)
    assert (m["val/problems"], m["val/samples"], m["val/temperature"]) == (1, 4, 1.0)


def test_two_data_sources_are_averaged_over_problems_overall_and_apart():
    # aime: problems with 2/4 and 0/4 correct; amc: 4/4 and 1/4
    groups = {("aime", "a1"): [1, 1, 0, 0], ("amc", "b1"): [1, 1, 1, 1], ("aime", "a2"): [0, 0, 0, 0],
              ("amc", "b2"): [0, 0, 0, 1]}
    m = validation_metrics(config(n=4, pass_k=[2, 1]), *batch(groups))
    # pass@2 per problem: 2/4 -> 1 - C(2,2)/C(4,2) = 5/6; 0/4 -> 0; 4/4 -> 1; 1/4 -> 1/2
    assert m["val/pass@2/aime"] == pytest.approx((5 / 6 + 0) / 2)
    assert m["val/pass@2/amc"] == pytest.approx((1 + 0.5) / 2)
    assert m["val/pass@2"] == pytest.approx((5 / 6 + 0 + 1 + 0.5) / 4)
    per_problem = [5 / 6, 0, 1, 0.5]
    mean = sum(per_problem) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / 3)
    assert m["val/pass@2_stderr"] == pytest.approx(std / 2)
    assert m["val/pass@1/aime"] == pytest.approx(0.25) and m["val/pass@1/amc"] == pytest.approx(5 / 8)
    assert m["val/pass@1"] == pytest.approx(7 / 16) == m["val/accuracy"]
    assert "val/pass@4" not in m  # not in the configured list


def test_pass_at_k_grows_with_k_and_the_uid_not_the_position_makes_a_problem():
    # the samples of two problems interleaved (verl keeps each prompt's sessions together, but nothing relies on it)
    sources = ["s"] * 8
    uids = ["p", "q"] * 4
    acc = [1, 0, 0, 0, 0, 0, 0, 1]  # p: 1 of 4, q: 1 of 4
    m = validation_metrics(config(n=4), sources, uids, {"reward": [float(a) for a in acc], "acc": acc})
    assert (m["val/pass@1"], m["val/pass@2"], m["val/pass@4"]) == pytest.approx((0.25, 0.5, 1.0))


def test_greedy_or_one_sample_logs_pass_at_1_only(caplog):
    sources, uids, infos = batch({("math", "u1"): [1, 1, 1, 1], ("math", "u2"): [0, 0, 0, 0]})
    with caplog.at_level(logging.WARNING, logger="e3.engines.verl.validation"):
        greedy = validation_metrics(config(n=4, temperature=0.0, do_sample=False), sources, uids, infos)
    assert greedy["val/pass@1"] == pytest.approx(0.5) and greedy["val/temperature"] == 0.0
    assert not [k for k in greedy if k.startswith("val/pass@") and not k.startswith("val/pass@1")]
    assert "greedy validation" in caplog.text  # n - 1 decodes per problem wasted: said once
    sources, uids, infos = batch({("math", "u1"): [1], ("math", "u2"): [0]})
    single = validation_metrics(config(n=1), sources, uids, infos)
    assert single["val/pass@1"] == pytest.approx(0.5)
    assert not [k for k in single if k.startswith("val/pass@") and not k.startswith("val/pass@1")]


def test_do_sample_false_at_a_positive_temperature_still_samples(caplog):
    # verl's agent loop validates at val_kwargs.temperature whatever do_sample says: the samples are sampled
    sources, uids, infos = batch({("math", "u1"): [0, 1, 0, 0]})
    with caplog.at_level(logging.WARNING, logger="e3.engines.verl.validation"):
        m = validation_metrics(config(n=4, temperature=0.7, do_sample=False), sources, uids, infos)
    assert m["val/pass@4"] == pytest.approx(1.0)
    assert "do_sample=false" in caplog.text


def test_a_missing_session_counts_as_a_wrong_sample():
    # verl's expected count is 4 but one session failed and left 3 samples: 1 correct of 4, not of 3
    sources, uids, infos = batch({("math", "u1"): [1, 0, 0]})
    m = validation_metrics(config(n=4), sources, uids, infos)
    assert m["val/pass@1"] == pytest.approx(0.25) and m["val/pass@4"] == pytest.approx(1.0)
    assert m["val/pass@2"] == pytest.approx(0.5)
    # verl's own expected counts, when given, decide instead of val_kwargs.n
    m = validation_metrics(config(n=4), sources, uids, infos, expected_counts={("math", "u1"): 3})
    assert m["val/pass@1"] == pytest.approx(1 / 3) and "val/pass@4" not in m


def test_correctness_is_acc_else_reward_above_zero():
    # source a has acc (a reward of 0.5 with acc 0 is wrong); source b's reward function returned a bare float:
    # verl's extra-info lists hold None for it, and its reward decides (0.5 > 0 is right, -1 is wrong)
    sources = ["a", "a", "b", "b"]
    uids = ["x", "x", "y", "y"]
    infos = {"reward": [0.5, 1.0, 0.5, -1.0], "acc": [0, 1, None, None]}
    m = validation_metrics(config(n=2), sources, uids, infos)
    assert m["val/pass@1/a"] == pytest.approx(0.5) and m["val/pass@1/b"] == pytest.approx(0.5)
    assert m["val/pass@2/a"] == pytest.approx(1.0) and m["val/pass@2/b"] == pytest.approx(1.0)


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="sample uids"):
        validation_metrics(config(), ["s"] * 4, ["u"] * 3, {"reward": [1.0] * 4})
    with pytest.raises(ValueError, match="'acc'"):
        validation_metrics(config(), ["s"] * 4, ["u"] * 4, {"reward": [1.0] * 4, "acc": [1] * 3})


def test_the_pass_k_list_is_a_checked_config_key():
    assert E3Config().validation.pass_k == [1, 2, 4, 8, 16]
    assert E3Config.from_dict({"validation": {"pass_k": [1, 32]}}).validation.pass_k == [1, 32]
    with pytest.raises(ValueError, match="e3.validation.pass_k"):
        E3Config.from_dict({"validation": {"pass_k": [0, 2]}})
    with pytest.raises(ValueError, match="e3.validation.pass_k"):
        validation_metrics(config(pass_k=[4, -1]), *batch({("m", "u"): [1, 0, 0, 0]}))
    with pytest.raises(ValueError, match="unknown config key e3.validation.k"):
        E3Config.from_dict({"validation": {"k": [1]}})
