"""Reading inference outputs and problem files (ours and the E3 authors'), bad input located by file/line/field,
atomic writes, and main_eval's scores/lengths/accuracy on hand-built responses."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from e3.benchmarks import load_problem_file
from e3.io import DataError, JsonlAppender, atomic_path, atomic_write_jsonl, drop_truncated_tail, read_jsonl
from e3.main_eval import read_outputs


def lines(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# -- the authors' formats ---------------------------------------------------------------------------------------
def test_authors_test_json_is_read(shared_data):
    problems = load_problem_file(shared_data / "test.json")
    assert Counter(p["source"] for p in problems) == {"aime": 30, "amc": 83, "math": 500, "olympiad_bench": 675}
    assert len({p["id"] for p in problems}) == len(problems) == 1288
    assert problems[0]["answer"] == "204" and problems[0]["prompt"].startswith("Every morning Aya")
    aime = load_problem_file(shared_data / "test.json", sources=["aime"])
    assert len(aime) == 30 and {p["id"] for p in aime} == {f"aime-{i}" for i in range(30)}


def test_authors_test_outputs_field_is_read(tmp_path):
    path = lines(tmp_path / "authors.json", [
        {"prompt": "1+1?", "source": "math", "answer": "2", "test_outputs": ["\\boxed{2}", "3"]},
        {"prompt": "2+2?", "source": "math", "answer": 4, "test_outputs": ["4"]},
        {"prompt": "x?", "source": "aime", "answer": "025", "test_outputs": ["25", "\\boxed{025}", "no"]},
    ])
    rows = read_outputs(path)
    assert [r["id"] for r in rows] == ["math-0", "math-1", "aime-0"]
    assert rows[0]["responses"] == ["\\boxed{2}", "3"] and "test_outputs" not in rows[0]
    assert rows[1]["answer"] == "4" and rows[2]["source"] == "aime" and len(rows[2]["responses"]) == 3


# -- bad input: one clear error with file, line and field --------------------------------------------------------
GOOD = {"id": "a", "source": "s", "prompt": "p", "answer": "1", "responses": ["r"]}


@pytest.mark.parametrize("bad, line, field", [
    ('{"id": "b", "answer": "1", "responses": ["r"', 2, None),                   # malformed JSON
    ({"id": "b", "source": "s", "responses": ["r"]}, 2, "answer"),               # missing field
    ({"id": "b", "source": "s", "answer": "1", "responses": []}, 2, "responses"),  # empty responses
    ({"id": "b", "source": "s", "answer": "1", "responses": ["ok", 3]}, 2, "responses[1]"),
    ({"id": "b", "source": "s", "answer": "1", "responses": "just text"}, 2, "responses"),
    ({"id": "b", "source": "s", "answer": "1"}, 2, "responses"),
    ({"id": "a", "source": "s", "answer": "1", "responses": ["r"]}, 2, "id"),     # duplicate id
    ('["not", "an", "object"]', 2, None),
])
def test_bad_output_lines_are_located(tmp_path, bad, line, field):
    path = lines(tmp_path / "out.jsonl", [GOOD, bad, GOOD | {"id": "c"}])
    with pytest.raises(DataError) as err:
        read_outputs(path)
    assert err.value.path == str(path) and err.value.line == line and err.value.field == field
    assert f"out.jsonl, line {line}" in str(err.value)
    if field:
        assert f"field '{field}'" in str(err.value)


@pytest.mark.parametrize("bad, field", [
    ({"source": "s", "answer": "1"}, "prompt"), ({"prompt": " ", "answer": "1"}, "prompt"),
    ({"prompt": "p"}, "answer"), ({"prompt": "p", "answer": ""}, "answer"), ({"prompt": "p", "answer": None}, "answer"),
    ({"prompt": "p", "answer": "1", "source": 7}, "source"), ({"prompt": ["p"], "answer": "1"}, "prompt"),
])
def test_bad_problem_lines_are_located(tmp_path, bad, field):
    path = lines(tmp_path / "problems.jsonl", [{"prompt": "p", "answer": "1"}, {"prompt": "q", "answer": "2"}, bad])
    with pytest.raises(DataError, match=rf"problems\.jsonl, line 3: field '{field}'"):
        load_problem_file(path)


def test_wrong_encoding_is_located(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"prompt": "p", "answer": "1"}).encode() + b"\n"
                     + '{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not valid UTF-8"):
        load_problem_file(path)


def test_main_eval_rejects_bad_input_and_writes_nothing(tmp_path, repo_root):
    path = lines(tmp_path / "out.jsonl", [GOOD, GOOD | {"id": "b", "responses": []}])
    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_eval.py"), "--input", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "out.jsonl, line 2: field 'responses': empty" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# -- io helpers ----------------------------------------------------------------------------------------------------
def test_truncated_tail_is_dropped_atomically(tmp_path):
    path = tmp_path / "o.jsonl"
    with JsonlAppender(path) as out:
        out.append({"id": "a"})
        out.append({"id": "b", "text": "line\nbreak"})
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "c", "resp')
    assert [r["id"] for r in read_jsonl(path, allow_truncated_tail=True)] == ["a", "b"]
    with pytest.raises(DataError, match="line 3: malformed JSON"):
        read_jsonl(path)
    assert drop_truncated_tail(path) == len(b'{"id": "c", "resp')
    assert path.read_bytes() == whole
    assert drop_truncated_tail(path) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]  # no temporary left behind


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.jsonl"
    atomic_write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write_jsonl(path, rows())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_atomic_path_serves_any_writer(tmp_path):
    """The one atomic write: writers that open the path themselves and pick a format by its suffix (``savefig``,
    ``torch.save``); the result has the usual permissions (not mkstemp's 0600); a failure keeps the old file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    png = tmp_path / "sub" / "fig.png"
    fig = plt.figure()
    with atomic_path(png) as tmp:
        assert tmp.parent == png.parent and tmp.suffix == ".png" and tmp.exists() and not png.exists()
        fig.savefig(tmp)
    plt.close(fig)
    assert png.read_bytes().startswith(b"\x89PNG")
    umask = os.umask(0)
    os.umask(umask)
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask
    pt = tmp_path / "state.pt"
    with atomic_path(pt) as tmp:
        torch.save({"x": 1}, tmp)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(pt) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert torch.load(pt) == {"x": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fig.png", "state.pt", "sub"]


def test_data_error_names_a_line_or_a_row():
    assert str(DataError("f.jsonl", 3, "answer", "missing")) == "f.jsonl, line 3: field 'answer': missing"
    assert str(DataError("f.parquet", field="answer", message="missing", row=0)) == \
        "f.parquet, row 0: field 'answer': missing"
    assert str(DataError("f.parquet", message="unreadable")) == "f.parquet: unreadable"
    with pytest.raises(TypeError):
        DataError("f", 1, None, "both", row=0)


# -- main_eval end to end on responses of known correctness -------------------------------------------------------
def test_main_eval_scores_lengths_and_accuracy(tmp_path, repo_root):
    path = lines(tmp_path / "run.jsonl", [
        {"id": "g1", "source": "gsm8k", "prompt": "p", "answer": "18",
         "responses": ["She makes 9 * 2 = 18 dollars. \\boxed{18}", "The answer is \\boxed{20}", "\\boxed{18}",
                       "\\boxed{$18$}"]},
        {"id": "m1", "source": "math", "prompt": "p", "answer": "\\frac{1}{2}",
         "responses": ["so x = \\boxed{0.5}", "\\boxed{\\frac12}", "\\boxed{2}", "I do not know"]},
        {"id": "m2", "source": "math", "prompt": "p", "answer": "3",
         "test_outputs": ["\\boxed{4}", "\\boxed{5}", "\\boxed{6}", "\\boxed{7}"]},
    ])
    proc = subprocess.run([sys.executable, str(repo_root / "e3" / "main_eval.py"), "--input", str(path),
                           "--workers", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scored = [json.loads(x) for x in (tmp_path / "run.scored.jsonl").read_text().splitlines()]
    assert [r["scores"] for r in scored] == [[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert scored[0]["lengths"] == [len(s.split()) for s in scored[0]["responses"]]
    summary = json.loads((tmp_path / "run.summary.json").read_text())
    assert summary["sources"]["gsm8k"]["accuracy"] == pytest.approx(3 / 4)
    assert summary["sources"]["math"] == pytest.approx({"accuracy": 2 / 8, "problems": 2, "samples": 8,
                                                        "mean_length": sum(sum(r["lengths"]) for r in scored[1:]) / 8})
    assert summary["all"]["accuracy"] == pytest.approx(5 / 12)
    assert "whitespace" in summary["length_unit"]
    assert "41.67%" in proc.stdout and "gsm8k" in proc.stdout
