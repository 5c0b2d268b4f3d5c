"""Atomic checkpoints of the local engine: complete or absent, pruned, partial writes ignored and cleaned."""

import os
import signal
import subprocess
import sys
import textwrap

import torch

from e3.engines.local import checkpoint as ckpt


def test_save_load_prune_and_latest(tmp_path):
    run = str(tmp_path)
    for step in (0, 5, 10):
        ckpt.save(run, step, {"step": step, "w": torch.full((3,), float(step))}, keep=2)
    assert ckpt.list_steps(run) == [5, 10]
    latest = ckpt.latest_checkpoint(run)
    assert latest.endswith("step_000010")
    state = ckpt.load(latest)
    assert state["step"] == 10 and torch.equal(state["w"], torch.full((3,), 10.0))
    assert open(os.path.join(run, "checkpoints", "latest")).read().strip() == "step_000010"


def test_resaving_a_step_replaces_it(tmp_path):
    run = str(tmp_path)
    ckpt.save(run, 3, {"v": 1})
    ckpt.save(run, 3, {"v": 2})
    assert ckpt.list_steps(run) == [3] and ckpt.load(ckpt.latest_checkpoint(run))["v"] == 2


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    run = str(tmp_path)
    ckpt.save(run, 1, {"v": 1})
    code = textwrap.dedent("""
        import os, signal, sys, torch
        from e3.engines.local import checkpoint as ckpt
        def hook(event, info):
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save(sys.argv[1], 2, {"v": torch.zeros(1000)}, hook=hook)
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", code, run], env={**os.environ, "PYTHONPATH": repo}, timeout=120)
    assert p.returncode == -signal.SIGKILL
    names = os.listdir(os.path.join(run, "checkpoints"))
    assert any(n.startswith(".tmp-step_000002") for n in names)
    assert ckpt.list_steps(run) == [1] and ckpt.load(ckpt.latest_checkpoint(run))["v"] == 1
    removed = ckpt.clean_partial(run)
    assert removed and not any(n.startswith(".tmp-") for n in os.listdir(os.path.join(run, "checkpoints")))


def test_no_checkpoint_gives_none(tmp_path):
    assert ckpt.latest_checkpoint(str(tmp_path)) is None and ckpt.list_steps(str(tmp_path)) == []
