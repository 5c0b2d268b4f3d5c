"""Reliability figures: fuzzed rewards, killed runs, malformed data, odd controller inputs.

    python bench/reliability.py            # full: 10,000 fuzzed rewards, 5 kills of training, 5 of inference
    python bench/reliability.py --quick    # the same checks, smaller (< 2 minutes)

Prints one table of figures and exits 1 if anything hung, crashed, lost more than the steps since the last
checkpoint, duplicated or lost a problem, or accepted bad input silently (``--strict``: also if a refusal did not
name the row or field). The checks are the ones the fast tests in ``tests/reliability/`` run, at full size:

- reward fuzzing: ``fuzz_inputs`` (tests/reliability/fuzz_inputs.py: nested braces, 100 kB responses,
  unbalanced ``\\left(``, ``10^{10^{10}}``, many ``\\boxed{}``, unicode / binary noise, empty strings, odd ground
  truths) — half through ``score_batch``, half through ``compute_score`` from threads, all at once; a hang is a call
  that took longer than the bound + 1 s, or did not return; a crash is an exception reaching the caller or a
  score outside {0, 1};
- kill and resume: ``test_kill_resume.kill_resume_trial`` (SIGKILL of ``python -m e3.engines.local`` at seeded
  points, including mid-``state.pt``; resume; compare with an uninterrupted run);
- inference kills: ``test_infer_kill.infer_kill_trial`` (SIGKILL of ``python -m e3.main_infer``, restart);
- malformed data: ``malformed.build_corpus`` through every entry point's CLI in a subprocess (+ valid controls);
- controller robustness: ``test_controller_robustness.CASES``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "reliability")]  # the test helpers it runs
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SLACK = 2.0  # seconds past the bound for killing and replacing a worker on a loaded 2-core machine


def say(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ reward fuzzing
def reward_fuzz(n: int, seed: int, bound: float, threads: int) -> dict:
    from fuzz_inputs import fuzz_inputs

    from e3.reward import compute_score, reset_reward_stats, reward_stats, score_batch

    items = fuzz_inputs(n, seed)
    batch_items, single_items = items[0::2], items[1::2]
    pool = 2 + threads  # enough workers that no call waits for one: its time is its own
    compute_score("fuzz", "\\boxed{1}", "1", timeout=30.0, workers=pool)  # start the pool outside the measurement
    reset_reward_stats()
    crashes, single_times, lock = [], [], threading.Lock()
    done = Counter()

    def valid(r) -> bool:
        return isinstance(r, dict) and r.get("score") in (0.0, 1.0) and r.get("acc") in (0, 1)

    def batch_thread():
        for i in range(0, len(batch_items), 200):
            chunk = batch_items[i:i + 200]
            try:
                res = score_batch(chunk, timeout=bound, workers=2)
            except BaseException as e:  # noqa: BLE001 - an exception reaching the caller is a crash
                with lock:
                    crashes.append(f"score_batch[{i}:{i + len(chunk)}]: {type(e).__name__}: {e}"[:300])
                continue
            bad = [chunk[j]["kind"] for j, r in enumerate(res) if not valid(r)]
            with lock:
                done["batch"] += len(res)
                if len(res) != len(chunk) or bad:
                    crashes.append(f"score_batch[{i}]: {len(res)} results for {len(chunk)} items, invalid: {bad}")

    def single_thread(k: int):
        for j in range(k, len(single_items), threads):
            it = single_items[j]
            t0 = time.monotonic()
            try:
                r = compute_score(it["data_source"], it["solution_str"], it["ground_truth"], it["extra_info"],
                                  timeout=bound, workers=pool)
                ok = valid(r)
            except BaseException as e:  # noqa: BLE001
                r, ok = f"{type(e).__name__}: {e}"[:300], False
            dt = time.monotonic() - t0
            with lock:
                done["single"] += 1
                single_times.append((dt, it["kind"]))
                if not ok:
                    crashes.append(f"compute_score(kind={it['kind']}): {r!r}"[:300])

    t0 = time.monotonic()
    workers = [threading.Thread(target=batch_thread, daemon=True)] + [
        threading.Thread(target=single_thread, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    deadline = t0 + n * (bound + SLACK)  # every call bounded: the whole run is too
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(w.is_alive() for w in workers)
    wall = time.monotonic() - t0
    stats = reward_stats()
    slow = max(single_times) if single_times else (0.0, "-")
    ordered = sorted(dt for dt, _ in single_times)
    p99 = ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0
    slowest = max(stats["slowest_s"], slow[0])
    over = sum(1 for dt, _ in single_times if dt > bound + SLACK) + (stats["slowest_s"] > bound + SLACK)
    return {"inputs": n, "kinds": len({it["kind"] for it in items}), "via_score_batch": done["batch"],
            "via_compute_score": done["single"], "threads": threads + 2, "bound_s": bound, "wall_s": wall,
            "hangs": stuck + over, "crashes": len(crashes), "crash_examples": crashes[:5],
            "slowest_s": slowest, "slowest_kind_single": slow[1], "p99_s": p99, "timeouts": stats["timeouts"],
            "worker_errors": stats["errors"], "worker_crashes": stats["crashes"], "calls_counted": stats["calls"]}


# ------------------------------------------------------------------------------------------------ the others
def kill_resume(work: Path, seed: int, kills: int) -> dict:
    from test_kill_resume import kill_resume_trial

    return kill_resume_trial(work, seed=seed, kills=kills)


def infer_kills(work: Path, seed: int, kills: int, problems: int) -> dict:
    from test_infer_kill import infer_kill_trial

    return infer_kill_trial(work, seed=seed, kills=kills, problems=problems)


def malformed_data(work: Path, quick: bool) -> dict:
    import malformed as M

    model = M.model_dir(work / "model")
    cases = M.build_corpus(work / "corpus")
    entries = M.ENTRIES
    if quick:  # without the slow-to-import perplexity script (it validates with e3.data, as verl_validate does);
        # the local engine's CLI main runs in-process
        entries = tuple(e for e in M.ENTRIES if e != "verl_ppl")
        cases = [c for c in cases if c.entry in entries]
    def one(c):
        return M.check(c, work / "runs" / c.name.replace("/", "__"), model, in_process=in_process(c.entry))

    def in_process(entry):
        return quick and entry == "local_train"

    # in-process runs redirect this process's stderr: one at a time; the subprocesses two at a time
    results = {c.name: one(c) for c in cases if in_process(c.entry)}
    with ThreadPoolExecutor(2) as ex:
        results.update(zip([c.name for c in cases if not in_process(c.entry)],
                           ex.map(one, [c for c in cases if not in_process(c.entry)])))
    results = [results[c.name] for c in cases]
    controls = []
    for entry in entries:
        for parquet in (False, True) if entry in ("local_train", "verl_validate") else (False,):
            rc, touched, out = M.control(entry, work / "controls" / f"{entry}{'-pq' if parquet else ''}", model,
                                         in_process=quick and entry == "local_train", parquet=parquet)
            controls.append({"entry": entry, "parquet": parquet, "rc": rc, "wrote": touched,
                             "ok": rc == 0 and (bool(touched) or entry == "verl_validate")})
    return {"files": len(results), "entries": len({c.entry for c in cases}),
            "refused": sum(r.refused for r in results),
            "located": sum(r.refused and r.located for r in results),
            "silently_accepted": [r.case for r in results if not r.refused],
            "tracebacks": [r.case for r in results if r.traceback],
            "touched": [f"{r.case}: {r.changes}" for r in results if not r.untouched],
            "unlocated": [f"{r.case}: {r.message.splitlines()[-1] if r.message else ''}"[:240]
                          for r in results if r.refused and not r.located],
            "controls": controls, "controls_ok": sum(c["ok"] for c in controls),
            "slowest_check_s": max(r.seconds for r in results)}


def controller_cases() -> dict:
    import warnings

    from test_controller_robustness import run_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's NaN warnings in the NaN-score case
        res = run_cases()
    return {"cases": len(res), "defined": sum(r["ok"] for r in res),
            "failed": [f"{r['name']}: {r['outcome']}" + (f"  [{r['bug']}]" if r["bug"] else "") for r in res
                       if not r["ok"]],
            "outcomes": {r["name"]: r["outcome"] for r in res}}


# ------------------------------------------------------------------------------------------------ the table
def table(f: dict, kr: dict, ik: dict, md: dict, cc: dict) -> tuple[list[tuple[str, str, bool]], list[str],
                                                                     list[str]]:
    """(rows (figure, value, ok), fatal problems, deficiencies)."""
    rows, fatal, weak = [], [], []

    def row(name, value, ok=True, problem=None, is_fatal=True):
        rows.append((name, value, ok))
        if not ok and problem:
            (fatal if is_fatal else weak).append(problem)

    row("reward: inputs fuzzed", f"{f['inputs']:,} ({f['kinds']} kinds; {f['via_score_batch']:,} via score_batch + "
        f"{f['via_compute_score']:,} via compute_score, {f['threads']} threads at once)",
        f["via_score_batch"] + f["via_compute_score"] == f["inputs"], "not every fuzzed input got a result")
    row("reward: hangs", str(f["hangs"]), f["hangs"] == 0, f"{f['hangs']} reward call(s) hung")
    row("reward: crashes", str(f["crashes"]), f["crashes"] == 0, f"reward crashes: {f['crash_examples']}")
    row("reward: slowest call / bound", f"{f['slowest_s']:.2f} s / {f['bound_s']:.2f} s (p99 {f['p99_s']:.2f} s; "
        f"{f['timeouts']} calls stopped at the bound, {f['worker_errors'] + f['worker_crashes']} worker "
        f"errors contained; all scored 0)", f["slowest_s"] <= f["bound_s"] + SLACK)
    lost = [k.get("steps_lost") for k in kr["kills"]]
    row("train: kills (SIGKILL)", f"{len(kr['kills'])} at " + ", ".join(f"{k['point']}@{k['step']}"
                                                                         for k in kr["kills"]),
        all(k["killed"] for k in kr["kills"]), "a planned kill did not happen")
    row("train: steps lost per kill", f"{lost} (checkpoint every {kr['save_every']} steps)",
        all(x is not None and 0 <= x <= kr["save_every"] for x in lost), "a resume lost more than the steps "
        "since the last checkpoint")
    newest = sum(k.get("resumed_from") == k["newest_complete"] for k in kr["kills"])
    row("train: resumed from the newest complete checkpoint", f"{newest}/{len(kr['kills'])}",
        newest == len(kr["kills"]), "a resume did not start from the newest complete checkpoint")
    row("train: resumed decisions equal", f"{kr['decisions'] - len(kr['decisions_unequal'])}/{kr['decisions']} "
        f"(n_i, temperature per step; {kr['resumed_decisions']}/{len(kr['kills'])} resumes); final metrics "
        f"{'identical' if kr['metrics_equal'] else 'DIFFERENT'}",
        not kr["decisions_unequal"] and kr["metrics_equal"], "resumed decisions differ from the uninterrupted run")
    partial = sum(len(k["partial"]) for k in kr["kills"])
    row("train: half-written checkpoints seen", f"{kr['broken_seen']} (temporary dirs left by kills, ignored and "
        f"removed on resume: {partial}; mid-write kills: {sum(k['mid_write'] for k in kr['kills'])})",
        kr["broken_seen"] == 0 and not kr["partials_left_at_end"], "a half-written checkpoint was visible")
    row("train: hangs", str(kr["hangs"]), kr["hangs"] == 0, "a training process hung")
    row("infer: kills / duplicates / missing", f"{len(ik['kills'])} / {ik['duplicates']} / {ik['missing']} "
        f"(of {ik['problems']}; {sum(k['partial_tail'] for k in ik['kills'])} kills mid-line)",
        ik["duplicates"] == 0 and ik["missing"] == 0 and not ik["problems_found"],
        f"inference resume: {ik['problems_found']}")
    row("infer: output equals an uninterrupted run", "yes" if ik["identical_to_uninterrupted"] else "no",
        ik["identical_to_uninterrupted"], "resumed inference output differs from an uninterrupted run")
    row("malformed: files (entry points)", f"{md['files']} ({md['entries']})", True)
    row("malformed: refused before work", f"{md['refused']}/{md['files']}", not md["silently_accepted"],
        f"malformed files accepted silently: {md['silently_accepted']}")
    row("malformed: refused with file + row + field", f"{md['located']}/{md['files']}", not md["unlocated"],
        f"refused without file/row/field: {md['unlocated']}", is_fatal=False)
    row("malformed: outputs touched", str(len(md["touched"])), not md["touched"],
        f"outputs created or modified by refused runs: {md['touched']}")
    row("malformed: tracebacks", str(len(md["tracebacks"])), not md["tracebacks"],
        f"uncaught exceptions: {md['tracebacks']}")
    row("malformed: valid controls accepted", f"{md['controls_ok']}/{len(md['controls'])}",
        md["controls_ok"] == len(md["controls"]), f"valid control failed: {md['controls']}")
    row("controller: cases / defined outcomes", f"{cc['cases']} / {cc['defined']}", cc["defined"] == cc["cases"],
        f"controller cases without a defined outcome: {cc['failed']}")
    return rows, fatal, weak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (< 2 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fuzz", type=int, default=None, help="reward inputs (default 10,000; --quick 400)")
    p.add_argument("--reward-timeout", type=float, default=0.5,
                   help="per-call bound of the reward during fuzzing, seconds (training default: 5)")
    p.add_argument("--kills", type=int, default=None, help="kills of training and of inference (default 5; quick 1)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory, removed)")
    p.add_argument("--json", default=None, help="also write every figure as JSON")
    p.add_argument("--strict", action="store_true", help="also fail when a refusal does not name row/field")
    args = p.parse_args(argv)
    n_fuzz = args.fuzz or (400 if args.quick else 10_000)
    kills = args.kills or (1 if args.quick else 5)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="e3-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    t0, times = time.monotonic(), {}
    try:
        say("[reliability] controller cases")
        s = time.monotonic()
        cc = controller_cases()
        times["controller"] = time.monotonic() - s
        say("[reliability] malformed data corpus")
        s = time.monotonic()
        md = malformed_data(work / "malformed", args.quick)
        times["malformed"] = time.monotonic() - s
        say(f"[reliability] kill and resume the local engine, kill and restart inference ({kills} kills each, "
            f"side by side)")
        s = time.monotonic()
        with ThreadPoolExecutor(2) as ex:
            kr_f = ex.submit(kill_resume, work / "kill_resume", args.seed, kills)
            ik_f = ex.submit(infer_kills, work / "infer_kill", args.seed, kills, 12 if args.quick else 24)
            kr, ik = kr_f.result(), ik_f.result()
        times["kills"] = time.monotonic() - s
        say(f"[reliability] reward fuzzing ({n_fuzz:,} inputs, bound {args.reward_timeout} s)")
        s = time.monotonic()
        fz = reward_fuzz(n_fuzz, args.seed, args.reward_timeout, threads=2)
        times["reward_fuzz"] = time.monotonic() - s
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    rows, fatal, weak = table(fz, kr, ik, md, cc)
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  ok   value")
    print("-" * (width + 60))
    for name, value, ok in rows:
        print(f"{name:<{width}}  {'yes' if ok else 'NO ':<4} {value}")
    total = time.monotonic() - t0
    print(f"(seed {args.seed}; {'quick' if args.quick else 'full'}; {total:.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ")")
    for w in weak:
        print(f"DEFICIENCY: {w}")
    for fl in fatal:
        print(f"FAIL: {fl}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reward_fuzz": fz, "kill_resume": kr, "infer_kill": ik,
                                               "malformed": md, "controller": cc, "seconds": times,
                                               "fatal": fatal, "deficiencies": weak}, indent=2, default=str))
    failed = bool(fatal) or (args.strict and bool(weak))
    print("reliability: FAIL" if failed else "reliability: OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
