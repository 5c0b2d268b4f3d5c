"""Experiment tracking of the local engine (``trainer.logger``), checked the way a user would: tensorboard event
files that tensorboard itself reads back, a wandb offline run on disk, console lines, metrics.jsonl always.

Not seen here: an online wandb or a remote mlflow server (no network); mlflow is exercised only where installed.
"""

import importlib.util
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from e3.engines.local.engine import run
from e3.engines.local.schema import ConfigError
from e3.engines.local.tracking import ExperimentLogger

from test_local_engine import tiny, ws_cache  # noqa: F401  (the tiny run and its warm-start cache fixture)


def _events(logdir: str) -> EventAccumulator:
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_experiment_logger_writes_tensorboard_scalars_and_histograms(tmp_path, capsys):
    t = ExperimentLogger(["console", "tensorboard"], str(tmp_path), "p", None, {"trainer": {"lr": 1e-3}})
    for step in range(3):
        t.log({"step": step, "reward/mean": 0.25 * step, "rollout/n_hist": [4, 8, 12], "done": True,
               "broken": float("nan")}, step)
    t.close()
    acc = _events(str(tmp_path / "tensorboard"))
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert acc.Tags()["scalars"] == ["reward/mean"]  # no bools, no NaN, "step" is the x axis
    assert [h.step for h in acc.Histograms("rollout/n_hist")] == [0, 1, 2]
    err = capsys.readouterr().err
    assert "step 2: reward/mean=0.5" in err


def test_unknown_or_missing_backend_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown backend 'neptune'"):
        ExperimentLogger(["neptune"], str(tmp_path), "p", None)
    if importlib.util.find_spec("mlflow") is None:
        with pytest.raises(ConfigError, match="mlflow needs the 'mlflow' package"):
            ExperimentLogger(["mlflow"], str(tmp_path), "p", None)


def test_a_run_logs_every_step_to_tensorboard_and_wandb_offline(tmp_path, ws_cache, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = ["console", "tensorboard", "wandb"] + (["mlflow"] if importlib.util.find_spec("mlflow") else [])
    if "mlflow" in loggers and importlib.util.find_spec("sqlalchemy") is None:  # mlflow-skinny: no sqlite store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "file://" + str(tmp_path / "mlruns"))
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_dir = tmp_path / "run"
    res = run(tiny(ws_cache, trainer={"total_steps": 3, "val_every": 3, "logger": loggers}), run_dir=str(run_dir),
              quiet=True)
    steps = [m["step"] for m in res.metrics]
    assert steps == [0, 1, 2, 3]  # metrics.jsonl is still the full record
    acc = _events(str(run_dir / "tensorboard"))
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("val/accuracy")] == [0, 3]
    got = {e.step: e.value for e in acc.Scalars("rollout/temperature")}
    assert got == pytest.approx({m["step"]: m["rollout/temperature"] for m in res.metrics if m["step"] > 0})
    offline = [d for d in os.listdir(run_dir / "wandb") if d.startswith("offline-run-")]
    assert len(offline) == 1 and any(f.endswith(".wandb") for f in os.listdir(run_dir / "wandb" / offline[0]))
    assert "step 3: " in capsys.readouterr().err
    if "mlflow" in loggers:
        import mlflow

        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir}/mlflow.db")
        hist = mlflow.MlflowClient().get_metric_history(mlflow.search_runs(experiment_names=["e3_local"],
                                                                           output_format="list")[0].info.run_id,
                                                        "reward/mean")
        assert sorted(h.step for h in hist) == [1, 2, 3]
