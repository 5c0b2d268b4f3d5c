"""The algorithm core is usable without verl: importing (and constructing) it must not import verl."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE = ["e3.allocation.allocator", "e3.allocation.registry", "e3.temperature", "e3.curriculum", "e3.weighting",
        "e3.advantage", "e3.metrics", "e3.schema", "e3.controller"]


def _core_modules():
    mods = list(CORE)
    if importlib.util.find_spec("e3.reward") is not None:
        mods.append("e3.reward")
    return mods


def _run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


CHECK = ("import sys; bad = sorted(m for m in sys.modules if m == 'verl' or m.startswith('verl.')); "
         "assert not bad, f'verl imported: {bad[:5]}'; print('ok')")


def test_core_imports_without_verl():
    proc = _run(f"import {', '.join(_core_modules())}; {CHECK}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_controller_use_imports_without_verl():
    # constructing and running the controller (every built-in allocation policy loaded) must not pull verl in either
    code = ("import numpy as np; from e3.schema import E3Config; from e3.controller import E3Controller; "
            "c = E3Controller(E3Config(), 8, 151936, max_steps=4, dataset_indices=np.arange(8)); "
            "p = c.plan(np.arange(4)); c.observe(p.rollout_indices(), np.zeros(p.total), 1.0); c.end_epoch(); "
            + CHECK)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_check_detects_verl():
    # guard against a check that cannot fail: a verl submodule in sys.modules is seen (without paying verl's import)
    proc = _run(f"import sys, types; sys.modules['verl.trainer'] = types.ModuleType('verl.trainer'); {CHECK}")
    assert proc.returncode != 0 and "verl imported" in proc.stderr


def test_local_engine_and_its_trackers_import_without_verl(tmp_path):
    # the local engine, its Hydra-composed config and its trackers (tensorboard here) stay free of verl
    code = ("import e3.engines.local; from e3.engines.local.schema import load_config; "
            "from e3.engines.local.tracking import ExperimentLogger; load_config('grpo'); "
            f"t = ExperimentLogger(['console', 'tensorboard'], {str(tmp_path)!r}, 'p', None); "
            "t.log({'step': 1, 'reward/mean': 0.5}, 1); t.close(); " + CHECK)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
