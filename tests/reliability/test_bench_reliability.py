"""bench/reliability.py's verdict: which figures fail the run (hang, crash, loss, duplicate, silent acceptance) and
which are reported as deficiencies (a refusal without row/field) — on hand-built figures, without running it."""

import copy
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "reliability.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reliability", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GOOD = {
    "fuzz": {"inputs": 10, "kinds": 11, "via_score_batch": 5, "via_compute_score": 5, "threads": 4, "bound_s": 0.5,
             "hangs": 0, "crashes": 0, "crash_examples": [], "slowest_s": 0.6, "p99_s": 0.5, "timeouts": 1,
             "worker_errors": 0, "worker_crashes": 0},
    "kill": {"save_every": 2, "decisions": 12, "decisions_unequal": [], "resumed_decisions": 2, "metrics_equal": True,
             "broken_seen": 0, "partials_left_at_end": [], "hangs": 0,
             "kills": [{"point": "state_write", "step": 4, "killed": True, "steps_lost": 2, "resumed_from": 2,
                        "newest_complete": 2, "partial": [".tmp-step_000004-1"], "mid_write": True},
                       {"point": "time", "step": 7, "killed": True, "steps_lost": 1, "resumed_from": 6,
                        "newest_complete": 6, "partial": [], "mid_write": False}]},
    "infer": {"kills": [{"partial_tail": True}], "duplicates": 0, "missing": 0, "problems": 12,
              "problems_found": [], "identical_to_uninterrupted": True},
    "malformed": {"files": 3, "entries": 2, "refused": 3, "located": 3, "silently_accepted": [], "tracebacks": [],
                  "touched": [], "unlocated": [], "controls": [{"ok": True}], "controls_ok": 1},
    "controller": {"cases": 2, "defined": 2, "failed": []},
}


def verdict(bench, figures):
    rows, fatal, weak = bench.table(figures["fuzz"], figures["kill"], figures["infer"], figures["malformed"],
                                    figures["controller"])
    return rows, fatal, weak


def test_all_good_figures_pass(bench):
    rows, fatal, weak = verdict(bench, GOOD)
    assert fatal == [] and weak == [] and all(ok for _, _, ok in rows)
    names = [r[0] for r in rows]
    for figure in ("reward: hangs", "reward: crashes", "reward: slowest call / bound", "train: steps lost per kill",
                   "train: resumed decisions equal", "train: half-written checkpoints seen",
                   "infer: kills / duplicates / missing", "malformed: refused with file + row + field",
                   "malformed: outputs touched", "controller: cases / defined outcomes"):
        assert figure in names


@pytest.mark.parametrize("section,key,value,expect", [
    ("fuzz", "hangs", 1, "hung"),
    ("fuzz", "crashes", 2, "reward crashes"),
    ("kill", "decisions_unequal", [5], "differ"),
    ("kill", "broken_seen", 1, "half-written"),
    ("infer", "duplicates", 1, "inference resume"),
    ("malformed", "silently_accepted", ["infer/x.jsonl"], "accepted silently"),
    ("malformed", "touched", ["eval/x.jsonl: ['existing.out']"], "outputs created or modified"),
    ("controller", "defined", 1, "without a defined outcome"),
])
def test_each_failure_is_fatal(bench, section, key, value, expect):
    figures = copy.deepcopy(GOOD)
    figures[section][key] = value
    if key == "duplicates":
        figures["infer"]["problems_found"] = ["1 duplicates"]
    _, fatal, _ = verdict(bench, figures)
    assert len(fatal) == 1 and expect in fatal[0], fatal


def test_a_loss_beyond_the_last_checkpoint_is_fatal(bench):
    figures = copy.deepcopy(GOOD)
    figures["kill"]["kills"][1]["steps_lost"] = 3  # more than save_every = 2
    _, fatal, _ = verdict(bench, figures)
    assert any("lost more than" in f for f in fatal)
    figures = copy.deepcopy(GOOD)
    figures["kill"]["kills"][0]["resumed_from"] = 0  # an older checkpoint than the newest complete one
    _, fatal, _ = verdict(bench, figures)
    assert any("newest complete checkpoint" in f for f in fatal)


def test_an_unlocated_refusal_is_a_deficiency_not_a_failure(bench):
    figures = copy.deepcopy(GOOD)
    figures["malformed"]["located"] = 2
    figures["malformed"]["unlocated"] = ["local_train/latin1.jsonl: cannot read dataset file"]
    _, fatal, weak = verdict(bench, figures)
    assert fatal == [] and len(weak) == 1 and "latin1" in weak[0]
