"""e3.reward: verdicts, the verl call pattern, threads / fork / spawn / daemonic callers, the time bound on a real
slow input, and workers killed while busy or idle, a worker error, a killed zygote; a crashed worker's pid reused by
another process is never signalled."""

import asyncio
import importlib.util
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import e3.reward as reward
from e3.reward import compute_score, reward_stats, score_batch
from e3.reward.score import VerifyOptions, gold_text, last_boxed

REPO_ROOT = Path(__file__).resolve().parents[2]
SLACK = 1.0  # seconds allowed past the timeout (kill + reply) on a loaded 2-core machine
SLOW = "\\boxed{2^{2^{2^{2^{2^{2}}}}}}"  # math-verify without a timeout grinds on this for minutes (and GBs)


def _gone(pid, wait=5.0):
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


def acc(solution, truth, **kw):
    out = compute_score("math", solution, truth, None, **kw)
    assert set(out) == {"score", "acc"} and isinstance(out["score"], float) and isinstance(out["acc"], int)
    assert out["score"] == float(out["acc"])
    return out["acc"]


def test_verdicts_last_boxed_and_final_answer():
    assert acc("Half of it: $\\boxed{\\frac{1}{2}}$.", "0.5") == 1
    assert acc("so \\boxed{0.5}", "\\frac12") == 1
    assert acc("so \\boxed{0.5}", "\\frac13") == 0
    assert acc("First $\\boxed{3}$. No, correcting myself: $\\boxed{4}$", "4") == 1  # the last box counts
    assert acc("First $\\boxed{3}$. No, correcting myself: $\\boxed{4}$", "3") == 0
    assert acc("Adding up, the final answer is $7$.", "7") == 1
    assert acc("no answer at all", "7") == 0


def test_several_boxes_in_one_paragraph_math_verify_sets_or_last_boxed():
    hedged, multi = "So \\boxed{3}, or rather \\boxed{4}", "The roots are \\boxed{1}, \\boxed{2} and \\boxed{3}."
    assert (acc(hedged, "4"), acc(hedged, "3"), acc(multi, "\\{1, 2, 3\\}")) == (0, 0, 1)  # math-verify: a set
    kw = {"last_boxed": True}
    assert (acc(hedged, "4", **kw), acc(hedged, "3", **kw), acc(multi, "\\{1, 2, 3\\}", **kw)) == (1, 0, 0)
    assert acc("So \\boxed{3}, or rather \\boxed 4", "4", **kw) == 1  # MATH's brace-less box, one parser for both
    assert acc("So \\boxed{3}, or rather \\boxed{4", "3", **kw) == 1  # cut at the length limit: the last complete box


def test_last_boxed_one_parser_union_of_rules():
    """The rules of the two parsers the project had (gold answers of MATH solutions; last-box-only responses)."""
    text = "a \\boxed{1} b \\boxed{\\frac{1}{\\{2\\}}} c \\boxed{3"  # escaped braces inside, the last box unclosed
    assert last_boxed(text) == "\\frac{1}{\\{2\\}}"
    assert last_boxed("\\boxed{\\boxed{5}}") == "\\boxed{5}"  # nested: the outermost (it closes last)
    assert last_boxed("no box {here}") is None and last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed(r"\boxed{}") == ""
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$ and then \boxed{3}") == "3"
    assert last_boxed(r"nested \boxed{x^{2}+\{1\}}") == r"x^{2}+\{1\}"
    assert last_boxed(r"our answer is $\boxed 2$.") == "2" and last_boxed(r"\boxed \frac12 or so") == r"\frac12"
    assert last_boxed(r"\fbox{7}") == "7" and last_boxed(r"\boxed {4} ") == "4"
    assert last_boxed(r"\boxed{1} then \boxed 2") == "2" and last_boxed(r"\boxed 2 then \fbox{ 3 }") == "3"


def test_bare_ground_truth_is_wrapped():
    assert gold_text("\\sqrt{51}") == "\\boxed{\\sqrt{51}}"
    assert gold_text(" $5$ ") == "$5$" and gold_text("\\boxed{3}") == "\\boxed{3}"
    assert gold_text("\\$32,\\!348") == "\\boxed{\\$32,\\!348}"  # an escaped dollar is not a delimiter
    # parsed bare, math-verify gets [] / [3] / [] from these ground truths; wrapped, they verify
    assert acc("Hence $r = \\boxed{\\sqrt{51}}$", "\\sqrt{51}") == 1
    point = "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert acc(f"The point is $\\boxed{{{point}}}$", point) == 1
    assert acc("The answer is \\boxed{\\text{Evelyn}}", "\\text{Evelyn}") == 1


def test_gold_goes_first():
    # math-verify is asymmetric: a relation as gold accepts an interval, an interval as gold rejects a relation
    assert acc("$x \\in [-2,7]$", "$-2 \\le x \\le 7$") == 1
    assert acc("$-2 \\le x \\le 7$", "$x \\in [-2,7]$") == 0


def test_ground_truth_types():
    assert acc("\\boxed{5}", 5) == 1 and acc("\\boxed{5}", np.int64(5)) == 1 and acc("\\boxed{0.5}", 0.5) == 1
    assert acc("\\boxed{4}", ["3", "4"]) == 1 and acc("\\boxed{4}", np.array(["3", "4"])) == 1
    assert acc("\\boxed{4}", ("3",)) == 0 and acc("\\boxed{4}", []) == 0
    assert acc("\\boxed{4}", None) == 0 and acc("\\boxed{4}", "") == 0
    assert acc(b"\\boxed{4}", b"4") == 1
    assert acc(None, "4") == 0 and acc(b"\xff\xfe\x00", "4") == 0


def test_options_are_passed_and_validated():
    assert acc("$f(y)$", "$f(x)$") == 0
    assert acc("$f(y)$", "$f(x)$", strict=False) == 1
    assert acc("0.3333", "$\\frac{1}{3}$", float_rounding=4) == 1
    assert acc("0.3333", "$\\frac{1}{3}$", float_rounding=6) == 0
    for bad in ({"timeout": 0}, {"timeout": -1.0}, {"timeout": "5"}, {"extraction": ("latex", "regex")},
                {"extraction": ()}):
        with pytest.raises(ValueError):
            compute_score("m", "\\boxed{1}", "1", **bad)


def test_verl_call_pattern_keyword_args_in_executor_threads():
    """verl 0.9.1's NaiveRewardManager: ``loop.run_in_executor(None, lambda: compute_score(data_source=...,
    solution_str=..., ground_truth=..., extra_info=..., **extra))`` with ``reward_kwargs`` merged in."""
    reward_kwargs = {"timeout": 5.0, "workers": 2}

    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(None, lambda i=i: compute_score(
            data_source="math", solution_str=f"so \\boxed{{{i}}}", ground_truth=str(i % 4),
            extra_info={"index": i, "num_turns": None, "rollout_reward_scores": {}}, reward_router_address=None,
            **reward_kwargs)) for i in range(12)]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert [r["acc"] for r in results] == [int(i == i % 4) for i in range(12)]


def test_call_from_threads():
    out = {}
    t = threading.Thread(target=lambda: out.update(r=compute_score("m", "\\boxed{\\frac{2}{4}}", "0.5")))
    t.start()
    t.join(60)
    assert out["r"] == {"score": 1.0, "acc": 1}

    results = [None] * 16

    def work(i):
        results[i] = compute_score("m", f"\\boxed{{{i}}}", str(i if i % 2 else i + 1), workers=2)["acc"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [i % 2 for i in range(16)]


def _fork_child(q):
    # inherits the parent's pool object: it must start its own, and clean it up at exit (atexit)
    compute_score("m", "\\boxed{1}", "1")
    pool = reward._pool(1)
    q.put((compute_score("m", "\\boxed{12}", "12")["acc"], compute_score("m", "\\boxed{1}", "2")["acc"],
           [w.pid for w in pool.live] + [pool.zygote.proc.pid]))


def _spawn_child(q):
    # a daemonic spawn child (multiprocessing refuses to start children from it) loading e3/reward/__init__.py by file path
    # like verl's load_module; it is then SIGKILLed in the middle of a long call: nothing may be left running
    spec = importlib.util.spec_from_file_location("custom_module_e3_reward", REPO_ROOT / "e3" / "reward" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    right = mod.compute_score(data_source="m", solution_str="\\boxed{12}", ground_truth="12", extra_info={})
    wrong = mod.compute_score(data_source="m", solution_str="\\boxed{1}", ground_truth="2", extra_info={})
    threading.Thread(target=mod.compute_score, args=("m", SLOW, "5"), kwargs={"timeout": 600}, daemon=True).start()
    pool = mod._pool(1)
    while len(pool.live) - len(pool.idle) < 1:  # wait until the slow call has its worker
        time.sleep(0.01)
    q.put((right["acc"], wrong["acc"], [w.pid for w in pool.live] + [pool.zygote.proc.pid]))
    time.sleep(600)


def test_callers_started_by_fork_and_spawn_as_daemon_leave_no_process_behind():
    compute_score("m", "\\boxed{1}", "1")  # the parent has a pool whose fds a fork child inherits
    fork, spawn = mp.get_context("fork"), mp.get_context("spawn")
    qf, qs = fork.Queue(), spawn.Queue()
    pf = fork.Process(target=_fork_child, args=(qf,))
    ps = spawn.Process(target=_spawn_child, args=(qs,), daemon=True)
    pf.start()
    ps.start()
    right, wrong, pids = qf.get(timeout=120)
    pf.join(30)
    assert (right, wrong, pf.exitcode) == (1, 0, 0)
    assert [pid for pid in pids if not _gone(pid)] == []  # stopped by the child's atexit
    right, wrong, pids = qs.get(timeout=120)
    assert (right, wrong) == (1, 0) and len(pids) >= 2  # the busy worker and the zygote at least
    os.kill(ps.pid, 9)  # the zygote sees EOF and exits; the busy worker dies with it (PR_SET_PDEATHSIG)
    ps.join(30)
    assert [pid for pid in pids if not _gone(pid)] == []
    assert compute_score("m", "\\boxed{3}", "3")["acc"] == 1  # the parent's pool is untouched


def test_score_batch_order_types_and_validation():
    items = [{"data_source": "m", "solution_str": f"\\boxed{{{i}}}", "ground_truth": str(i % 3)} for i in range(30)]
    items += [("m", "\\boxed{7}", "7"), ("m", "\\boxed{7}", "8", {"index": 1}), ["m", "\\boxed{1/2}", "0.5"]]
    got = score_batch(items, timeout=5.0, workers=2)
    want = [int(i == i % 3) for i in range(30)] + [1, 0, 1]
    assert [r["acc"] for r in got] == want
    assert all(set(r) == {"score", "acc", "timeout", "error"} and r["timeout"] == r["error"] == 0 for r in got)
    assert score_batch([], workers=2) == []
    with pytest.raises(ValueError, match="item 1: missing field 'ground_truth'"):
        score_batch([items[0], {"solution_str": "x"}])
    with pytest.raises(ValueError, match="item 0"):
        score_batch(["just a string"])


def test_slow_input_is_cut_at_the_deadline_and_counted():
    compute_score("m", "\\boxed{1}", "1")
    before = reward_stats()
    t0 = time.monotonic()
    out = compute_score("m", SLOW, "5", timeout=1.0)
    elapsed = time.monotonic() - t0
    after = reward_stats()
    assert out == {"score": 0.0, "acc": 0}
    assert 1.0 <= elapsed <= 1.0 + SLACK
    assert after["timeouts"] == before["timeouts"] + 1 and after["calls"] == before["calls"] + 1
    assert compute_score("m", "\\boxed{2^{10}}", "1024", timeout=5.0)["acc"] == 1  # a fresh worker took over

    # in a batch on two workers: each slow item is cut, the others are scored
    items = [("m", SLOW, "1"), ("m", "\\boxed{2}", "2"), ("m", SLOW, "1"), ("m", "\\boxed{3}", "4")]
    t0 = time.monotonic()
    got = score_batch(items, timeout=1.0, workers=2)
    assert [(r["acc"], r["timeout"], r["error"]) for r in got] == [(0, 1, 0), (1, 0, 0), (0, 1, 0), (0, 0, 0)]
    assert time.monotonic() - t0 <= 1.0 + SLACK + 0.5


def test_worker_killed_while_busy_or_idle_and_worker_errors(monkeypatch):
    assert compute_score("m", "\\boxed{1}", "1", workers=2)["acc"] == 1
    pool = reward._pool(2)
    before = reward_stats()

    # killed while busy (e.g. by the OOM killer): the call returns at once with 0, counted as a crash
    killer = threading.Timer(0.5, lambda: [os.kill(w.pid, 9) for w in list(pool.live) if w not in pool.idle])
    killer.start()
    t0 = time.monotonic()
    assert compute_score("m", SLOW, "5", timeout=30.0) == {"score": 0.0, "acc": 0}
    assert time.monotonic() - t0 < 5.0
    killer.join()

    # killed while idle: the call retries on a fresh worker and is not a failure
    for w in list(pool.idle):
        os.kill(w.pid, 9)
        assert _gone(w.pid)
    assert compute_score("m", "\\boxed{5}", "5")["acc"] == 1

    # an exception escaping the scorer in the worker (here: options it cannot read) is an error
    with monkeypatch.context() as patched:
        patched.setattr(VerifyOptions, "among", classmethod(lambda cls, kwargs: {"no_such_option": 1}))
        assert compute_score("m", "\\boxed{5}", "5") == {"score": 0.0, "acc": 0}
    assert compute_score("m", "\\boxed{5}", "5")["acc"] == 1
    after = reward_stats()
    assert (after["crashes"] - before["crashes"], after["errors"] - before["errors"],
            after["timeouts"] - before["timeouts"], after["calls"] - before["calls"]) == (1, 1, 0, 4)

    # the zygote killed: its workers die with it (Linux), a new zygote starts when a worker is next needed
    os.kill(pool.zygote.proc.pid, 9)
    pool.zygote.proc.wait(10)
    assert all(_gone(w.pid) for w in list(pool.idle))
    assert compute_score("m", "\\boxed{6}", "6")["acc"] == 1
    assert reward_stats()["zygotes_started"] == after["zygotes_started"] + 1
