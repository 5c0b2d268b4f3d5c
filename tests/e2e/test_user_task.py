"""End to end: a task of the user's own (reverse a digit string), in a module of theirs, trains in the local engine.

What a user checks after writing a ``Task`` subclass: ``task.kind=my_tasks:ReverseTask`` (or a name given to
``register_task``) selects it with no change to this project; its level grammar and the demonstrator checks apply
to the config; the run draws its prompts, scores with its verifier and warm-starts on its demonstrations.
"""

import json
import os
import sys
import textwrap

import pytest

from e3.engines.local.engine import run
from e3.engines.local.schema import ConfigError, load_config
from e3.tasks import registry

USER_MODULE = '''
"""A user's task: reverse a string of digits (``"123=" -> "321"``); levels ``len1`` .. ``len4``."""
import itertools

from e3.tasks.base import Task, pool_of

SCORED = []


class ReverseTask(Task):
    def parse_level(self, spec):
        if not (spec.startswith("len") and spec[3:].isdigit() and 1 <= int(spec[3:]) <= 4):
            raise ValueError(f"task.levels: bad reverse level {spec!r} (want len1 .. len4)")
        return int(spec[3:])

    def pools(self):
        t = self.cfg
        pools = {"demo": [], "rl": [], "val": []}
        for level, spec in enumerate(t.levels):
            for digits in itertools.product("0123456789", repeat=self.parse_level(spec)):
                prompt = "".join(digits) + "="
                row = {"prompt": prompt, "answer": prompt[-2::-1], "level": level}
                pools[pool_of(prompt, t.seed, t.val_fraction, t.demo_fraction)].append(row)
        return pools

    def score(self, response, answer):
        SCORED.append((response, answer))
        return super().score(response, answer)
'''
KIND = "my_tasks:ReverseTask"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_tasks", raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield
    sys.modules.pop("my_tasks", None)


def tiny(tmp_path) -> dict:
    return {
        "threads": 1, "device": "cpu", "plots": False,
        "task": {"kind": KIND, "levels": ["len2", "len3"], "train_size": 24, "val_size": 20, "prompt_width": 5,
                 "max_new_tokens": 4},
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
        "warm_start": {"steps": 40, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
                       "demo_error_rate": 0.0, "cache_dir": str(tmp_path / "ws")},
        "rollout": {"batch_size": 8, "n": 4},
        "trainer": {"total_steps": 2, "save_every": 2, "val_every": 2, "lr": 1e-3},
        "val": {"n_samples": 2},
        "e3": {"allocation": {"n_low": 2, "n_high": 6, "n_update": 2}},
    }


def test_a_user_task_is_checked_by_its_own_rules(user_module):
    load_config(None, [f"task.kind={KIND}", "task.levels=[len2]", "warm_start.demo_error_rate=0"])
    with pytest.raises(ConfigError, match="task.levels bad reverse level 'len9'"):
        load_config(None, [f"task.kind={KIND}", "task.levels=[len9]", "warm_start.demo_error_rate=0"])
    # the default noisy demonstrator needs slips, which this task does not define
    with pytest.raises(ConfigError, match=f"warm_start.demo_error_rate must be 0 with task.kind={KIND}"):
        load_config(None, [f"task.kind={KIND}", "task.levels=[len2]"])
    with pytest.raises(ConfigError, match="data.train_file and data.val_file are for tasks that read data files"):
        load_config(None, [f"task.kind={KIND}", "task.levels=[len2]", "warm_start.demo_error_rate=0",
                           "data.train_file=rows.jsonl"])
    with pytest.raises(ConfigError, match="task.kind='my_tasks:NoSuchTask': cannot load it"):
        load_config(None, ["task.kind=my_tasks:NoSuchTask"])


def test_a_user_task_trains_in_the_local_engine(tmp_path, user_module):
    res = run(tiny(tmp_path), run_dir=str(tmp_path / "run"), quiet=True)
    import my_tasks

    assert [m["step"] for m in res.metrics] == [0, 1, 2]
    assert res.metrics[0]["warm_start/steps"] == 40 and "val/accuracy" in res.metrics[-1]
    assert all(m["rollout/n_total"] == 32 for m in res.metrics[1:])
    with open(os.path.join(res.run_dir, "train.jsonl")) as fh:  # the prompts are the user's task
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 24 and {r["level"] for r in rows} == {0, 1}
    assert all(r["answer"] == r["prompt"][-2::-1] and len(r["prompt"]) in (3, 4) for r in rows)
    # every rollout (2 steps x 32) and validation sample (steps 0 and 2: 20 problems x (2 samples + greedy)) went
    # through its verifier
    assert len(my_tasks.SCORED) == 2 * 32 + 2 * 20 * 3
    assert {a for _, a in my_tasks.SCORED} <= {r["answer"] for r in rows} | {
        json.loads(line)["answer"] for line in open(os.path.join(res.run_dir, "val.jsonl"))}


def test_a_registered_user_task_is_selected_by_its_name(user_module):
    import my_tasks

    registry.register_task("reverse", my_tasks.ReverseTask)
    cfg = load_config(None, ["task.kind=reverse", "task.levels=[len1,len2]", "warm_start.demo_error_rate=0"])
    task = registry.make_task(cfg.task)
    demo, train, val = task.rows()
    assert isinstance(task, my_tasks.ReverseTask) and task.cache_payload()["kind"] == "reverse"
    assert len(demo) + len(train) + len(val) == 10 + 100  # every problem of both levels, in one pool each
    assert {r["level"] for r in demo + train + val} == {0, 1}
