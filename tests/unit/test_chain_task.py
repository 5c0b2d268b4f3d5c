"""The chain task's generator, noisy demonstrator and verifier, and the start-up report's arithmetic (pure)."""

import itertools
import re

import numpy as np
import pytest

from e3.tasks import chain as ct
from e3.engines.local.report import format_report, summarise


def test_scratchpad_and_verifier_on_a_worked_example():
    chain = (("+", 8), ("-", 3), ("+", 9))
    assert ct.prompt_of(47, chain) == "47+8-3+9="
    assert ct.scratchpad(47, chain) == ("47+8=55-3=52+9=61", 61)
    # one slip carries through: 55 -> 65, then the demonstrator continues correctly from 65
    assert ct.scratchpad(47, chain, (10, 0, 0)) == ("47+8=65-3=62+9=71", 71)
    assert ct.scratchpad(12, (("*", 3), ("-", 40))) == ("12*3=36-40=-4", -4)
    assert ct.score("47+8=55-3=52+9=61", "61") == 1.0
    assert ct.score("47+8=55-3=52+9=60", "61") == 0.0
    assert ct.score("61", "61") == 1.0  # outcome reward: the scratchpad is not required
    assert ct.score("47+8=55-3=52+9=61+", "61") == 0.0
    assert ct.final_answer("+4=-1") == "-1"


def test_level_specs_parse_count_and_refuse():
    lv = ct.ChainLevel.parse("2d+-1dx3")
    assert (lv.start_digits, lv.ops, lv.operand_digits, lv.steps) == (2, "+-", 1, 3)
    assert lv.count() == 90 * 18 ** 3
    assert ct.ChainLevel.parse("1d*1dx1").count() == 10 * 9
    for bad in ("2d+-1d", "2dx3", "2d/1dx2", "5d+1dx2", "2d+1dx0"):
        with pytest.raises(ValueError, match="chain level spec"):
            ct.ChainLevel.parse(bad)


def test_small_levels_are_enumerated_and_large_ones_sampled_without_repeats():
    small = ct.ChainLevel.parse("1d+1dx1").problems(10_000, np.random.default_rng(0))
    assert len(small) == 10 * 9 and len(set(small)) == 90
    big = ct.ChainLevel.parse("2d+-2dx3").problems(500, np.random.default_rng(0))
    assert len(big) == 500 and len(set(big)) == 500
    assert all(len(chain) == 3 and all(10 <= d <= 99 for _, d in chain) for _, chain in big)


def test_pools_are_disjoint_and_answers_true():
    pools = ct.build_pools(["2d+-1dx1", "2d+-1dx2"], seed=3, val_fraction=0.2, demo_fraction=0.3,
                           problems_per_level=400, demo_variants=3, step_error_rate=0.0)
    prompts = {k: {r["prompt"] for r in v} for k, v in pools.items()}
    assert not (prompts["rl"] & prompts["val"]) and not (prompts["demo"] & (prompts["rl"] | prompts["val"]))
    for row in pools["rl"] + pools["val"]:
        value = eval(row["prompt"][:-1])  # left to right +/- equals Python's order for + and - only
        assert row["answer"] == str(value)
    # a noise-free demonstrator writes the true scratchpad, demo_variants times per problem
    assert len(pools["demo"]) == 3 * len(prompts["demo"])
    for row in pools["demo"]:
        assert ct.score(row["answer"], str(eval(row["prompt"][:-1]))) == 1.0
        assert row["answer"].count("=") == row["prompt"].count("+") + row["prompt"].count("-")
        assert row["answer"].startswith(row["prompt"].split("+")[0].split("-")[0])  # the start number first


def test_noisy_demonstrator_slips_each_step_at_the_configured_rate():
    rng = np.random.default_rng(0)
    problems = ct.ChainLevel.parse("2d+-1dx4").problems(2000, rng)
    q = 0.2
    rows = ct.noisy_demos(problems, [0] * len(problems), variants=2, error_rate=q, rng=np.random.default_rng(1))
    right_steps, steps, right_final = 0, 0, 0
    for (start, chain), row in zip([p for p in problems for _ in range(2)], rows):
        values = [int(v) for _, _, v in re.findall(r"([+\-*])(\d+)=(-?\d+)", row["answer"])]  # running values
        assert len(values) == 4
        prev = start
        for (op, d), v in zip(chain, values):
            want = ct.apply(prev, op, d)
            assert v - want in (0, *ct.SLIPS)  # a slip is one of -10, -1, +1, +10 of the step's true result
            right_steps += v == want
            steps += 1
            prev = v  # the demonstrator continues from what it wrote
        right_final += values[-1] == ct.scratchpad(start, chain)[1]
    n = steps
    assert abs(1 - right_steps / n - q) < 4 * np.sqrt(q * (1 - q) / n)
    # a final answer is right when the slips sum to 0 (none, or e.g. +1 then -1): exact chance by enumeration
    outcomes = [(0, 1 - q)] + [(d, q / 4) for d in ct.SLIPS]
    p_right = sum(np.prod([p for _, p in combo]) for combo in itertools.product(outcomes, repeat=4)
                  if sum(d for d, _ in combo) == 0)
    assert p_right == pytest.approx(0.448, abs=0.002)  # (1 - q)^4 = 0.41 plus cancelling pairs
    assert abs(right_final / len(rows) - p_right) < 4 * np.sqrt(p_right * (1 - p_right) / len(rows))


def test_startup_report_counts_never_always_and_mixed():
    correct = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=float)
    lengths = np.array([[3, 5, 3, 5], [2, 2, 2, 2], [4, 4, 4, 4], [6, 6, 6, 6]], dtype=float)
    finals = np.array([["1", "2", "3", "1"], ["7"] * 4, ["5", "6", "5", "6"], ["9"] * 4], dtype=object)
    m = summarise(correct, lengths, finals, [0, 0, 1, 1])
    assert m["task/never_solved"] == 0.5 and m["task/always_solved"] == 0.25 and m["task/mixed"] == 0.25
    assert m["task/pass_rate"] == pytest.approx((0 + 1 + 0.5 + 0) / 4)
    assert m["task/distinct_answers"] == pytest.approx((3 + 1 + 2 + 1) / 4)
    assert m["task/response_tokens"] == pytest.approx(lengths.mean())
    assert m["task/never_solved_level_0"] == 0.5 and m["task/always_solved_level_0"] == 0.5
    assert m["task/never_solved_level_1"] == 0.5 and m["task/pass_rate_level_1"] == 0.25
    text = format_report(m, ["easy", "hard"])
    assert "never solved 50.0%, always solved 25.0%, mixed 25.0%" in text and "level 1       hard" in text


def test_undemonstrated_levels_appear_only_as_rl_and_val_prompts():
    pools = ct.build_pools(["2d+-1dx1", "2d+-1dx2"], seed=3, val_fraction=0.2, demo_fraction=0.3,
                           problems_per_level=400, demo_variants=1, step_error_rate=0.0, demonstrated=["2d+-1dx1"])
    assert {r["level"] for r in pools["demo"]} == {0}
    assert {r["level"] for r in pools["rl"]} == {r["level"] for r in pools["val"]} == {0, 1}
    # the demonstrated level's pools do not change when another level loses its demonstrations
    full = ct.build_pools(["2d+-1dx1", "2d+-1dx2"], seed=3, val_fraction=0.2, demo_fraction=0.3,
                          problems_per_level=400, demo_variants=1, step_error_rate=0.0)
    assert [r for r in full["demo"] if r["level"] == 0] == pools["demo"]
    assert full["rl"] == pools["rl"] and full["val"] == pools["val"]
