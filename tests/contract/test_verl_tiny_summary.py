"""The ``verl_cpu_tiny`` run's end-of-run summary (``e3.engines.verl.cpu.tiny.summary``) says how validation sampled.

It reads only the run's ``metrics.jsonl``; here that file holds records written from ``validation_metrics``'s real
output (the real run's summary is checked in ``tests/e2e/test_verl_cpu.py``). A contract test because importing
``e3.engines.verl.cpu`` registers the CPU plugin with verl in this process.
"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

pytest.importorskip("verl")

from e3.engines.verl.cpu.tiny import summary  # noqa: E402
from e3.engines.verl.validation import validation_metrics  # noqa: E402


def config(n, temperature, do_sample=True):
    return OmegaConf.create({"actor_rollout_ref": {"rollout": {"val_kwargs": {
        "n": n, "temperature": temperature, "do_sample": do_sample}}}})


def test_the_tiny_runs_summary_says_how_validation_sampled(tmp_path):
    train = {"rollout/n_total": 64, "rollout/temperature": 1.0, "rollout/n_min": 8, "rollout/n_max": 8,
             "reward/mean": 0.5, "rollout/entropy": 0.4, "rollout/target_entropy": 0.4, "groups/all_wrong": 0.1}

    def write(*records):
        with open(tmp_path / "metrics.jsonl", "w") as fh:
            for step, data in records:
                fh.write(json.dumps({"step": step, "data": data}) + "\n")
        return summary(str(tmp_path))

    acc = [1, 1, 0, 0] + [0, 0, 0, 0]  # problem u1: 2 of 4 correct, u2: none
    sampled = validation_metrics(config(n=4, temperature=1.0), ["m"] * 8, ["u1"] * 4 + ["u2"] * 4,
                                 {"reward": [float(a) for a in acc], "acc": acc})
    text = write((0, sampled), (1, train))
    assert "val accuracy (mean of 4 samples per problem at T=1, 2 problems): step 0: 0.250" in text
    assert "val pass@k (unbiased): step 0: pass@1 0.250, pass@2 0.417, pass@4 0.500" in text
    greedy = validation_metrics(config(n=1, temperature=0.0, do_sample=False), ["m", "m"], ["u1", "u2"],
                                {"reward": [1.0, 0.0], "acc": [1, 0]})
    text = write((0, greedy), (1, train))
    assert "val accuracy (greedy, 1 sample per problem, 2 problems): step 0: 0.500" in text and "pass@" not in text
    assert "val accuracy (setting not logged): step 0: 0.500" in write((0, {"val/accuracy": 0.5}), (1, train))
