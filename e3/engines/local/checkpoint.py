"""Atomic checkpoints for the local engine: a checkpoint is complete or absent, never half-written.

Layout: ``<run_dir>/checkpoints/step_000050/{state.pt, meta.json}``. ``save`` writes everything into a hidden
temporary directory ``.tmp-step_000050-<pid>`` (fsynced), then renames it into place with ``os.replace`` — one atomic
step on POSIX — and finally rewrites the ``latest`` pointer the same way. A process killed at any moment leaves at
most a ``.tmp-*`` directory, which ``latest_checkpoint`` ignores and ``clean_partial`` removes. Old checkpoints
beyond ``keep`` are pruned after the new one is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Callable, Optional

import torch

from e3.io import atomic_write_text
from e3.io import fsync_dir as _fsync_dir

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def save(run_dir: str, step: int, state: dict, keep: int = 2,
         hook: Optional[Callable[[str, dict], None]] = None) -> str:
    """Write ``state`` as the checkpoint of ``step`` atomically; returns its directory."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    name = f"step_{step:06d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "state.pt"), "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    atomic_write_text(os.path.join(tmp, "meta.json"), json.dumps({"step": step}))
    _fsync_dir(tmp)
    if hook is not None:
        hook("checkpoint_partial", {"step": step, "tmp": tmp})
    if os.path.isdir(final):  # re-saving a step (only after a resume from it): replace the old one
        old = os.path.join(root, f".old-{name}-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(os.path.join(root, "latest"), name + "\n")
    for old_step in list_steps(run_dir)[:-max(1, keep)]:
        # rename first: a kill during the delete leaves a hidden .old-* dir (removed by clean_partial), never a
        # half-deleted step_* that looks like a checkpoint
        doomed = os.path.join(root, f".old-step_{old_step:06d}-{os.getpid()}")
        os.replace(os.path.join(root, f"step_{old_step:06d}"), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def list_steps(run_dir: str) -> list[int]:
    """Steps of the complete checkpoints, ascending."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, "state.pt")):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """Directory of the newest complete checkpoint, or None."""
    steps = list_steps(run_dir)
    return os.path.join(run_dir, "checkpoints", f"step_{steps[-1]:06d}") if steps else None


def clean_partial(run_dir: str) -> list[str]:
    """Remove temporary directories left by a process killed while saving; returns what was removed."""
    root = os.path.join(run_dir, "checkpoints")
    removed = []
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith((".tmp-", ".old-", ".latest.")):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True) if os.path.isdir(
                    os.path.join(root, name)) else os.remove(os.path.join(root, name))
                removed.append(name)
    return removed


def load(path: str) -> dict:
    """The state saved in a checkpoint directory (CPU tensors; numpy/python RNG states included)."""
    return torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=False)
