"""Kill and resume the local engine: SIGKILL at seeded random points, then ``--resume``.

Each kill point is drawn from a seeded generator: the step, and where in it — at a step's start, right after
sampling (``after_rollout``), after the step's metrics are logged (``step_end``), in the middle of writing
``state.pt`` (``state_write``: ``torch.save`` writes half its bytes, then the process is killed), after the
checkpoint's temporary directory is complete but before its rename (``checkpoint_partial``), while an old
checkpoint is being removed (``prune``: its first file deleted, then the kill), or from outside at a
random moment after a step was logged (``time``: often inside a checkpoint write, with ``trainer.save_every=2``).
After every kill the trial checks what a user would find: every ``checkpoints/step_*`` directory loads and holds
its own step, ``latest`` names a complete checkpoint; then it resumes with the real CLI and records the step it
resumed from (must be the newest complete checkpoint) and the steps lost (last logged step - resumed step, at most
``save_every``). Every decision any process made — budgets n_i and temperature of every step, taken from the
engine's ``after_rollout`` hook — must equal the uninterrupted reference run's, and so must the final metrics.

``kill_resume_trial`` is shared with ``bench/reliability.py`` (5 kills); the fast test here does 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import e3.io

ROOT = Path(__file__).resolve().parents[2]
POINTS = ("step_begin", "after_rollout", "step_end", "state_write", "checkpoint_partial", "prune", "time")
SAVE_POINTS = ("state_write", "checkpoint_partial", "prune")  # only on steps that save a checkpoint

# A run of a few seconds: 2-layer 32-wide model, 24 prompts (3 steps per epoch, so budgets vary after step 3).
TINY = """\
threads: 1
device: cpu
plots: false
task: {{levels: ["2d+-1d", "2d*1d"], train_size: 24, val_size: 24}}
model: {{hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64}}
warm_start: {{steps: 30, batch_size: 64, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5, cache_dir: {cache}}}
rollout: {{batch_size: 8, n: 4}}
trainer: {{total_steps: {steps}, save_every: {save_every}, val_every: 1000, lr: 1.0e-3, keep_checkpoints: 2}}
val: {{n_samples: 1, greedy: false}}
e3: {{allocation: {{n_low: 2, n_high: 6, n_update: 2}}}}
"""

# Runs e3.engines.local's CLI (main) in this interpreter with a hook that logs events and kills at one point.
DRIVER = r"""
import io, json, os, signal, sys
import e3.engines.local.engine as L
events_path, kill = sys.argv[1], json.loads(sys.argv[2])
state = {"step": None}

def log(rec):
    with open(events_path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def hook(event, info):
    rec = {"event": event, "step": info.get("step")}
    if event == "after_rollout":
        rec.update(n=[int(x) for x in info["n"]], temperature=float(info["temperature"]))
    log(rec)
    if event == "step_end":
        state["step"] = info["step"]
    if kill and event == kill["point"] and info.get("step") == kill["step"]:
        die()

if kill and kill["point"] == "state_write":
    import torch
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if state["step"] != kill["step"] or not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        log({"event": "killed_mid_write", "step": state["step"], "bytes": len(data) // 2})
        die()
    torch.save = save

if kill and kill["point"] == "prune":  # removing an old checkpoint: its first file is gone, then the kill
    import shutil
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        name = os.path.basename(str(path))
        pruned = "step_" in name and not name.startswith(".tmp-")  # the old checkpoint, renamed or not
        if state["step"] == kill["step"] and pruned and os.path.isdir(path):
            first = next(os.scandir(path)).name  # the entry rmtree removes first
            os.remove(os.path.join(path, first))
            log({"event": "killed_mid_prune", "step": state["step"], "dir": name, "removed": first})
            die()
        return real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree

real_run = L.run
L.run = lambda *a, **k: real_run(*a, hooks=[hook], **k)
sys.exit(L.main(sys.argv[3:]))
"""


def strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k.startswith(("time/", "warm_start/"))}


def read_jsonl(path) -> list[dict]:
    """Complete lines only (a kill may leave a cut last line)."""
    return e3.io.read_jsonl(path, allow_truncated_tail=True) if os.path.isfile(path) else []


def inspect_checkpoints(run_dir: Path) -> dict:
    """What a user finds in ``checkpoints/``: complete ones, unloadable ``step_*`` dirs, partial temp dirs."""
    from e3.engines.local import checkpoint as ckpt

    root = run_dir / "checkpoints"
    complete, broken, partial = [], [], []
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        path = root / name
        if name.startswith("step_") and path.is_dir():
            try:
                state = ckpt.load(str(path))
                meta = json.loads((path / "meta.json").read_text())
                assert int(state["step"]) == int(name[5:]) == int(meta["step"])
                complete.append(int(name[5:]))
            except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                broken.append(f"{name}: {type(e).__name__}: {e}"[:200])
        elif name.startswith("."):
            partial.append(name)
    latest = root / "latest"
    if latest.is_file():
        target = latest.read_text().strip()
        if not (target.startswith("step_") and int(target[5:]) in complete):
            broken.append(f"latest -> {target} (not a complete checkpoint)")
    return {"complete": complete, "broken": broken, "partial": partial}


class Trial:
    """One seeded kill-and-resume experiment in ``work``: a reference run, then a run killed ``kills`` times."""

    def __init__(self, work, seed: int, kills: int, save_every: int = 2, steps: int | None = None,
                 timeout: float = 300.0):
        self.work, self.seed, self.kills, self.save_every = Path(work), seed, kills, save_every
        self.steps = steps or 4 + 4 * kills
        self.timeout = timeout
        self.rng = np.random.default_rng(seed)
        # the kinds of kill point, in a seeded order: always one inside a checkpoint write and one from outside
        extra = [str(p) for p in self.rng.choice(POINTS, max(0, kills - 2))]
        self.points = [str(p) for p in self.rng.permutation(["state_write", "time"] + extra)][:kills]
        self.k = 0
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "tiny.yaml"
        self.config.write_text(TINY.format(cache=self.work / "ws_cache", steps=self.steps, save_every=self.save_every))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.procs = 0

    # -- processes -------------------------------------------------------------------------------------------
    def start(self, run_dir: Path, resume: bool, kill: dict | None) -> tuple[subprocess.Popen, Path]:
        self.procs += 1
        events = self.work / f"events-{self.procs:02d}.jsonl"
        argv = [sys.executable, "-c", DRIVER, str(events), json.dumps(kill), "--config", str(self.config),
                "--run-dir", str(run_dir), "--quiet"] + (["--resume"] if resume else [])
        err = open(self.work / f"stderr-{self.procs:02d}.txt", "w")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=err, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        return proc, events

    def wait(self, proc: subprocess.Popen) -> int:
        try:
            return proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -999  # a hang

    def kill_from_outside(self, proc: subprocess.Popen, events: Path, step: int, delay: float) -> int:
        """SIGKILL ``delay`` seconds after this process logged ``step`` (the kill lands wherever the run is:
        with ``save_every=2`` often inside the checkpoint write that follows an even step)."""
        deadline = time.monotonic() + self.timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if any(e["event"] == "step_end" and e["step"] >= step for e in read_jsonl(events)):
                time.sleep(delay)
                break
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        return self.wait(proc)

    # -- the trial -------------------------------------------------------------------------------------------
    def kill_plan(self, resumed_from: int) -> dict:
        """The next seeded kill point, at least 2 steps after the resume point (so a decision gets made first);
        the checkpoint-write points fall on a step that saves (every ``save_every`` steps, and the last)."""
        last = self.steps - 1
        lo = min(resumed_from + 2, last)
        hi = min(lo + 2 * self.save_every, last)
        point = self.points[self.k % len(self.points)]
        self.k += 1
        if point in SAVE_POINTS:  # (a prune needs keep_checkpoints=2 older ones: from step 2 * save_every on)
            first = 2 * self.save_every if point == "prune" else 0
            saving = [s for s in range(max(lo, first), self.steps + 1) if s % self.save_every == 0 or s == self.steps]
            step = int(self.rng.choice([s for s in saving if s <= hi] or saving[:1]))
        else:  # not the last step: a kill from outside must land before the run ends
            step = int(self.rng.integers(lo, max(lo, min(hi, last - 1)) + 1))
        return {"point": point, "step": step, "delay": float(self.rng.uniform(0.0, 0.08))}

    def run(self) -> dict:
        ref_dir, run_dir = self.work / "reference", self.work / "killed"
        proc, ref_events = self.start(ref_dir, False, None)
        rc = self.wait(proc)
        if rc != 0:
            raise RuntimeError(f"reference run failed (rc {rc}): {(self.work / 'stderr-01.txt').read_text()[-2000:]}")
        reference = {m["step"]: strip(m) for m in read_jsonl(ref_dir / "metrics.jsonl")}
        ref_decisions = {e["step"]: (e["n"], e["temperature"]) for e in read_jsonl(ref_events)
                         if e["event"] == "after_rollout"}

        kills, all_events, resumed_from, hangs = [], [], 0, 0
        resume = False
        for k in range(self.kills):
            plan = self.kill_plan(resumed_from)
            external = plan["point"] == "time"
            proc, events = self.start(run_dir, resume, None if external else plan)
            rc = (self.kill_from_outside(proc, events, plan["step"], plan["delay"]) if external
                  else self.wait(proc))
            hangs += rc == -999
            evs = read_jsonl(events)
            all_events.append(evs)
            begins = [e["step"] for e in evs if e["event"] == "step_begin"]
            first_step = begins[0] - 1 if begins else None
            if resume:  # the resume point of this process: the step before the first one it started
                kills[-1]["resumed_from"] = first_step
                kills[-1]["steps_lost"] = None if first_step is None else kills[-1]["last_logged"] - first_step
            logged = read_jsonl(run_dir / "metrics.jsonl")
            found = inspect_checkpoints(run_dir)
            kills.append({"kill": k + 1, **plan, "rc": rc, "killed": rc == -signal.SIGKILL,
                          "last_logged": logged[-1]["step"] if logged else None,
                          "mid_write": any(e["event"] == "killed_mid_write" for e in evs),
                          "mid_prune": any(e["event"] == "killed_mid_prune" for e in evs),
                          "newest_complete": max(found["complete"]) if found["complete"] else None, **found})
            resume = True
            if rc != -signal.SIGKILL:
                break
            resumed_from = kills[-1]["newest_complete"] or 0

        proc, events = self.start(run_dir, True, None)  # the final resume runs to the end
        rc_final = self.wait(proc)
        hangs += rc_final == -999
        evs = read_jsonl(events)
        all_events.append(evs)
        begins = [e["step"] for e in evs if e["event"] == "step_begin"]
        if kills:
            kills[-1]["resumed_from"] = begins[0] - 1 if begins else self.steps
            kills[-1]["steps_lost"] = kills[-1]["last_logged"] - kills[-1]["resumed_from"]

        decisions = [(e["step"], e["n"], e["temperature"]) for evs in all_events for e in evs
                     if e["event"] == "after_rollout"]
        unequal = [d[0] for d in decisions if ref_decisions.get(d[0]) != (d[1], d[2])]
        final = {m["step"]: strip(m) for m in read_jsonl(run_dir / "metrics.jsonl")}
        metrics_equal = rc_final == 0 and final == reference
        end = inspect_checkpoints(run_dir)
        return {
            "seed": self.seed, "steps": self.steps, "save_every": self.save_every, "kills": kills,
            "hangs": hangs, "rc_final": rc_final,
            "decisions": len(decisions), "decisions_unequal": unequal,
            "resumed_decisions": sum(1 for k in kills if k.get("resumed_from") is not None and
                                     any(d[0] == k["resumed_from"] + 1 for d in decisions)),
            "metrics_equal": metrics_equal,
            "metrics_diff": [] if metrics_equal else sorted(
                s for s in set(final) | set(reference) if final.get(s) != reference.get(s))[:10],
            "broken_seen": len({b.split(":")[0] for k in kills for b in k["broken"]} |
                               {b.split(":")[0] for b in end["broken"]}),  # distinct directories
            "partials_left_at_end": end["partial"],
        }


def verdict(res: dict) -> list[str]:
    """Every way the trial falls short of the promise (empty = all good)."""
    bad = []
    for k in res["kills"]:
        tag = f"kill {k['kill']} ({k['point']} at step {k['step']})"
        if not k["killed"]:
            bad.append(f"{tag}: the process was not killed (rc {k['rc']}): the kill point was never reached")
            continue
        if k["point"] == "state_write" and not k["mid_write"]:
            bad.append(f"{tag}: no checkpoint write was interrupted")
        if k["point"] == "prune" and not k["mid_prune"]:
            bad.append(f"{tag}: no checkpoint removal was interrupted")
        if k.get("resumed_from") != k["newest_complete"]:
            bad.append(f"{tag}: resumed from step {k.get('resumed_from')}, newest complete checkpoint "
                       f"{k['newest_complete']}")
        lost = k.get("steps_lost")
        if lost is None or not 0 <= lost <= res["save_every"]:
            bad.append(f"{tag}: {lost} steps lost (at most save_every={res['save_every']} allowed)")
        if k["broken"]:
            bad.append(f"{tag}: half-written checkpoint visible: {k['broken']}")
    if res["hangs"]:
        bad.append(f"{res['hangs']} process(es) hung")
    if res["rc_final"] != 0:
        bad.append(f"the final resume failed (rc {res['rc_final']})")
    if res["decisions_unequal"]:
        bad.append(f"decisions differ from the reference run at steps {res['decisions_unequal']}")
    if not res["metrics_equal"]:
        bad.append(f"final metrics differ from the reference run at steps {res['metrics_diff']}")
    if res["partials_left_at_end"]:
        bad.append(f"partial checkpoint directories left after the final resume: {res['partials_left_at_end']}")
    return bad


def kill_resume_trial(work, seed: int, kills: int, **kw) -> dict:
    res = Trial(work, seed, kills, **kw).run()
    res["problems"] = verdict(res)
    return res


# ------------------------------------------------------------------------------------------------ pytest
def test_kill_plan_is_seeded_and_reaches_checkpoint_writes(tmp_path):
    def plans(seed):
        t = Trial(tmp_path / f"plan{seed}", seed=seed, kills=5)
        return [t.kill_plan(r) for r in (0, 2, 4, 6, 8)]

    assert plans(11) == plans(11) and plans(11) != plans(12)
    drawn = [p for seed in range(30) for p in plans(seed)]
    assert {p["point"] for p in drawn} == set(POINTS)
    for seed in range(30):  # every trial has a kill inside a checkpoint write and one from outside
        assert {"state_write", "time"} <= {p["point"] for p in plans(seed)}
    assert all(p["step"] % 2 == 0 or p["step"] == 24 for p in drawn if p["point"] in SAVE_POINTS)
    assert all(p["step"] <= 24 for p in drawn)


@pytest.mark.slow
def test_sigkill_at_seeded_points_resumes_exactly(tmp_path):
    """Two seeded kills (one inside a checkpoint write, one from outside at a random moment), then resume."""
    res = kill_resume_trial(tmp_path, seed=1, kills=2)
    assert not res["problems"], res
    assert sorted(k["point"] for k in res["kills"]) == ["state_write", "time"]
    assert all(k["killed"] for k in res["kills"]) and res["broken_seen"] == 0
    mid = next(k for k in res["kills"] if k["point"] == "state_write")
    assert mid["mid_write"] and mid["partial"]  # a half-written state.pt existed, only under a temporary name
    assert mid["steps_lost"] == 2 and mid["resumed_from"] == mid["step"] - 2
    assert res["decisions"] >= res["steps"] and res["resumed_decisions"] == 2
    assert res["metrics_equal"]


BUG_PRUNE = ("BUG e3/engines/local/checkpoint.py save: old checkpoints are pruned with shutil.rmtree in place, so a kill "
             "during the removal leaves checkpoints/step_NNNNNN/ with part of its files. If state.pt went first, the "
             "directory (meta.json only) is ignored by list_steps, so it is never pruned again, clean_partial does "
             "not remove it, and a user loading it gets FileNotFoundError (seen in bench/reliability.py from an "
             "outside kill). Fix: rename it to a hidden .old-* name first, then delete (clean_partial removes those)")


def test_a_kill_while_pruning_leaves_no_unloadable_checkpoint(tmp_path):
    """Checkpoint 3 is saved (keep=2), then removing checkpoint 1 is interrupted after its first file."""
    code = textwrap.dedent("""
        import os, shutil, signal, sys, torch
        from e3.engines.local import checkpoint as ckpt
        run = sys.argv[1]
        for s in (1, 2):
            ckpt.save(run, s, {"step": s, "v": torch.zeros(10)}, keep=2)
        real = shutil.rmtree
        def rmtree(path, *a, **k):
            base = os.path.basename(str(path))
            if "step_" in base and not base.startswith(".tmp-") and os.path.isdir(path):  # the pruned checkpoint
                os.remove(os.path.join(path, next(os.scandir(path)).name))  # rmtree's first removal
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, *a, **k)
        shutil.rmtree = rmtree
        ckpt.save(run, 3, {"step": 3, "v": torch.zeros(10)}, keep=2)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, timeout=120, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    from e3.engines.local import checkpoint as ckpt

    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_000003")  # the resume point is right ...
    ckpt.clean_partial(str(tmp_path))  # ... and after the resume-time cleanup no step_* dir is incomplete
    found = inspect_checkpoints(tmp_path)
    assert found["broken"] == [] and found["complete"][-2:] == [2, 3], found
