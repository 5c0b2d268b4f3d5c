"""Experiment tracking of the local engine, as verl's ``trainer.logger``: console, tensorboard, wandb, mlflow.

Every backend goes through its own client: tensorboard through ``torch.utils.tensorboard.SummaryWriter`` (event
files in ``$TENSORBOARD_DIR`` or ``<run dir>/tensorboard``), wandb through ``wandb.init/log`` (files under the run
directory; ``WANDB_MODE=offline`` or ``disabled`` as usual; a resumed run continues the same wandb run), mlflow
through ``mlflow.start_run/log_metrics`` (``$MLFLOW_TRACKING_URI``, else ``sqlite:///<run dir>/mlflow.db``, MLflow's
recommended local store, which needs SQLAlchemy: the full ``mlflow`` package has it), console through one
line of scalars per step on stderr. ``metrics.jsonl`` in the run directory is written by the engine whatever the
backends. Scalars go to every backend; a list (``rollout/n_hist``) is a histogram in tensorboard and wandb.

verl's ``verl.utils.tracking.Tracking`` does the same, but importing it imports verl (its package ``__init__``
loads verl's protocol, Ray and any registered verl plugins), which the local engine must not need; the few lines
per backend here are the clients' documented calls.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
from typing import Any, Iterable, Optional

import numpy as np

from e3.engines.local.schema import LOGGERS, ConfigError

_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_backends(names: Iterable[str]) -> None:
    """Refuse, before any work, a backend that is unknown or whose client is not installed."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"config key trainer.logger: unknown backend {name!r} (known: {', '.join(LOGGERS)})")
        module = _MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"config key trainer.logger: {name} needs the {module!r} package (pip install {module})")


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and math.isfinite(v)}


def _lists(metrics: dict) -> dict[str, list]:
    return {k: v for k, v in metrics.items() if isinstance(v, (list, tuple)) and v}


class Console:
    def log(self, metrics: dict, step: int) -> None:
        line = " ".join(f"{k}={v:.4g}" for k, v in _scalars(metrics).items() if not k.startswith("time/"))
        try:
            from tqdm import tqdm

            tqdm.write(f"step {step}: {line}", file=sys.stderr)  # keeps a progress bar intact
        except ImportError:
            print(f"step {step}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class TensorBoard:
    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = os.environ.get("TENSORBOARD_DIR") or os.path.join(run_dir, "tensorboard")
        self.writer = SummaryWriter(log_dir=self.dir)

    def log(self, metrics: dict, step: int) -> None:
        for k, v in _scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        for k, v in _lists(metrics).items():
            self.writer.add_histogram(k, np.asarray(v, dtype=float), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: str, project: str, name: str, config: dict):
        import wandb

        self.wandb = wandb
        run_id = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:16]  # stable across --resume
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=run_dir, config=config)

    def log(self, metrics: dict, step: int) -> None:
        data: dict[str, Any] = dict(_scalars(metrics))
        data.update({k: self.wandb.Histogram(v) for k, v in _lists(metrics).items()})
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run_dir: str, project: str, name: str, config: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or
                                "sqlite:///" + os.path.join(os.path.abspath(run_dir), "mlflow.db"))
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params(_flatten(config))

    def log(self, metrics: dict, step: int) -> None:
        self.mlflow.log_metrics(_scalars(metrics), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class ExperimentLogger:
    """Fans each step's metrics out to the configured backends; ``close()`` flushes and finishes them."""

    def __init__(self, backends: Iterable[str], run_dir: str, project: str, experiment: Optional[str],
                 config: Optional[dict] = None):
        names = list(dict.fromkeys(backends))  # each backend once, in the given order
        check_backends(names)
        name = experiment or os.path.basename(os.path.abspath(run_dir))
        config = config or {}
        self.backends: dict[str, Any] = {}
        try:
            for b in names:
                if b == "console":
                    self.backends[b] = Console()
                elif b == "tensorboard":
                    self.backends[b] = TensorBoard(run_dir)
                elif b == "wandb":
                    self.backends[b] = WandB(run_dir, project, name, config)
                elif b == "mlflow":
                    self.backends[b] = MLflow(run_dir, project, name, config)
        except BaseException:
            self.close()
            raise

    def log(self, metrics: dict, step: int) -> None:
        for backend in self.backends.values():
            backend.log(metrics, step)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        self.backends = {}
