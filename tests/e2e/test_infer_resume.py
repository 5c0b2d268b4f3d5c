"""main_infer with a tiny random model: output shape, resume after a kill (truncated last line, and a real SIGKILL)
without duplicate or missing problems, settings checked on resume, bad input rejected before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from e3 import main_infer
from tiny_lm import save_tiny_lm


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("model") / "tiny")


def problems_file(path, count):
    with open(path, "w") as fh:
        for i in range(count):
            fh.write(json.dumps({"prompt": f"What is {i} + {i}?", "answer": str(2 * i),
                                 "source": "toy" if i % 2 else "toy2"}) + "\n")
    return path


def infer(model, data, out, *extra):
    return main_infer.main([str(model), "--data", str(data), "--output", str(out), "--n", "3",
                            "--max-new-tokens", "8", "--batch-size", "6", "--quiet", *extra])


def read(out):
    return [json.loads(x) for x in out.read_text().splitlines()]


def test_output_lines(tmp_path, tiny_model):
    data, out = problems_file(tmp_path / "p.jsonl", 5), tmp_path / "out.jsonl"
    assert infer(tiny_model, data, out, "--seed", "3") == 0
    rows = read(out)
    assert [r["id"] for r in rows] == ["toy2-0", "toy-0", "toy2-1", "toy-1", "toy2-2"]
    for i, r in enumerate(rows):
        assert set(r) == {"id", "source", "prompt", "answer", "responses", "finish_reasons", "backend", "model",
                          "sampling"}
        assert r["backend"] == "hf" and len(r["finish_reasons"]) == 3
        assert set(r["finish_reasons"]) <= {"stop", "length"}
        assert r["prompt"] == f"What is {i} + {i}?" and r["answer"] == str(2 * i)
        assert len(r["responses"]) == 3 and all(isinstance(x, str) for x in r["responses"])
        assert r["sampling"] == {"n": 3, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 3,
                                 "chat_template": True, "system_prompt": None, "prompt_template": "{prompt}"}
        assert r["model"] == str(tiny_model)
    assert len({x for r in rows for x in r["responses"]}) > 5  # sampled, not one repeated string
    # same seed, same batches -> same samples
    out2 = tmp_path / "again.jsonl"
    infer(tiny_model, data, out2, "--seed", "3")
    assert read(out2) == rows


def test_resume_after_truncated_last_line(tmp_path, tiny_model):
    data, out = problems_file(tmp_path / "p.jsonl", 7), tmp_path / "out.jsonl"
    infer(tiny_model, data, out)
    full = out.read_bytes().splitlines(keepends=True)
    kept = b"".join(full[:3])
    out.write_bytes(kept + full[3][: len(full[3]) // 2])  # a kill in the middle of writing problem 4
    assert infer(tiny_model, data, out) == 0
    rows = read(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 7
    assert sorted(ids) == sorted(json.loads(x)["id"] for x in full)
    assert out.read_bytes().startswith(kept)  # completed lines untouched
    assert all(len(r["responses"]) == 3 for r in rows)
    # nothing left to do: a third run changes nothing
    before = out.read_bytes()
    assert infer(tiny_model, data, out) == 0
    assert out.read_bytes() == before


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, tiny_model):
    data, out = problems_file(tmp_path / "p.jsonl", 12), tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "e3.main_infer", str(tiny_model), "--data", str(data), "--output", str(out),
           "--n", "2", "--max-new-tokens", "24", "--batch-size", "2", "--threads", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "inference finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = out.read_bytes().count(b"\n")
    assert 2 <= done_before < 12
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} already in" in rerun.stderr
    ids = [r["id"] for r in read(out)]
    assert len(ids) == len(set(ids)) == 12  # 0 duplicates, 0 missing


def test_resume_with_other_settings_is_refused(tmp_path, tiny_model):
    data, out = problems_file(tmp_path / "p.jsonl", 3), tmp_path / "out.jsonl"
    infer(tiny_model, data, out)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match=r"out\.jsonl, line 1: field 'sampling'.*another --output"):
        infer(tiny_model, data, out, "--temperature", "0.6")
    assert out.read_bytes() == before


def test_bad_input_writes_nothing(tmp_path, tiny_model):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit, match=r"p\.jsonl, line 2: field 'answer': missing"):
        infer(tiny_model, data, out)
    assert not out.exists()
    data.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answ')
    with pytest.raises(SystemExit, match=r"p\.jsonl, line 2: malformed JSON"):
        infer(tiny_model, data, out)
    assert not out.exists()


def test_no_chat_template_and_prompt_template(tmp_path, tiny_model, monkeypatch):
    seen = []
    real = main_infer.HFBackend.generate

    def spy(self, ids, seed):
        seen.extend(self.tokenizer.decode(x) for x in ids)
        return real(self, ids, seed)

    monkeypatch.setattr(main_infer.HFBackend, "generate", spy)
    data, out = problems_file(tmp_path / "p.jsonl", 1), tmp_path / "out.jsonl"
    infer(tiny_model, data, out, "--no-chat-template", "--prompt-template", "Q: {prompt} Put it in \\boxed{}.")
    assert set(seen) == {"Q: What is 0 + 0? Put it in \\boxed{}."}
    seen.clear()
    infer(tiny_model, data, tmp_path / "chat.jsonl", "--system-prompt", "Be brief.")
    assert set(seen) == {"<|system|>Be brief.<eos><|user|>What is 0 + 0?<eos><|assistant|>"}


def test_checkpoint_sampling_defaults_are_ignored(tmp_path):
    """Sampling is exactly the flags: defaults in the checkpoint's generation_config.json (here: suppress every
    token but 'a', and top_k=1) must not apply — with them every response would be 'aaaaaa'."""
    from transformers import AutoTokenizer, GenerationConfig

    model = save_tiny_lm(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(model)
    keep = tok.convert_tokens_to_ids("a")
    GenerationConfig(do_sample=True, top_k=1, repetition_penalty=1.3, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id,
                     suppress_tokens=[i for i in range(len(tok)) if i != keep]).save_pretrained(model)
    data, out = problems_file(tmp_path / "p.jsonl", 2), tmp_path / "out.jsonl"
    main_infer.main([str(model), "--data", str(data), "--output", str(out), "--n", "6", "--max-new-tokens", "6",
                     "--quiet"])
    for r in read(out):
        assert len(set(r["responses"])) >= 4 and set("".join(r["responses"])) != {"a"}, r["responses"]
