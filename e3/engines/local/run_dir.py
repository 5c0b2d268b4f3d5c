"""Run directories of the local engine: never overwrite a run; resume from the newest complete checkpoint.

A fresh run needs a missing or empty directory. ``--resume`` continues from the newest complete checkpoint (see
``checkpoint``), or restarts from step 0 a run killed before its first one (its config is kept); the metric lines
written after that checkpoint (by the killed process) are dropped so the log continues seamlessly.
"""

from __future__ import annotations

import os
import time
from typing import Optional

from omegaconf import DictConfig

from e3.engines.local import checkpoint as ckpt
from e3.engines.local.schema import ConfigError
from e3.io import atomic_write_jsonl, read_jsonl


def prepare_run_dir(cfg: DictConfig, run_dir: Optional[str], resume: bool) -> tuple[str, Optional[str]]:
    """(run_dir, checkpoint to resume from or None). Never overwrites an existing run."""
    if run_dir is None:
        if resume:
            raise ConfigError("--resume needs --run-dir (the run to continue)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, k = os.path.join(cfg.run_root, stamp), 1
        while os.path.exists(run_dir):
            run_dir, k = os.path.join(cfg.run_root, f"{stamp}-{k}"), k + 1
    run_dir = os.path.abspath(run_dir)
    exists = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if not resume:
        if exists:
            raise ConfigError(f"run directory {run_dir} already exists and is not empty; pass --resume to continue "
                              f"it from its last checkpoint, or choose another --run-dir")
        return run_dir, None
    latest = ckpt.latest_checkpoint(run_dir) if exists else None
    if latest is None and not os.path.isfile(os.path.join(run_dir, "config.yaml")):
        raise ConfigError(f"--resume: {run_dir} is not a run directory (no config.yaml, no checkpoint)")
    return run_dir, latest  # latest None: killed before its first checkpoint (e.g. in the warm start)


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (atomic rewrite)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    atomic_write_jsonl(path, [m for m in read_jsonl(path, allow_truncated_tail=True)  # a last line cut by the kill
                              if m["step"] <= step])
