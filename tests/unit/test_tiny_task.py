"""The local engine's embedded task: tokenizer, level generator, pools, verifier, dataset-file checks."""

import json

import numpy as np
import pandas as pd
import pytest

from e3.io import DataError
from e3.tasks.arithmetic import Level, build_pools, load_rows, score
from e3.tasks.vocab import CharTokenizer
from e3.tasks.base import pool_of, sample_rows


def test_tokenizer_round_trip_and_left_padding():
    tok = CharTokenizer()
    assert tok.vocab_size == 16
    assert tok.decode(tok.encode("12*7=84")) == "12*7=84"
    arr = tok.left_pad(["3+4=", "12-34="], 7)
    assert arr.shape == (2, 7)
    assert arr[0, :3].tolist() == [tok.pad_id] * 3 and tok.decode(arr[0]) == "3+4="
    assert tok.decode(arr[1]) == "12-34=" and arr[1, 0] == tok.pad_id
    # decoding stops at eos and drops pads
    assert tok.decode(tok.encode("42") + [tok.eos_id] + tok.encode("99")) == "42"


def test_hf_tokenizer_matches_char_tokenizer():
    tok = CharTokenizer()
    hf = tok.to_hf()
    assert hf("12*7=", add_special_tokens=False)["input_ids"] == tok.encode("12*7=")
    assert hf.pad_token_id == tok.pad_id and hf.eos_token_id == tok.eos_id


@pytest.mark.parametrize("spec,count", [("1d+-*1d", 300), ("2d+-2d", 2 * 90 * 90), ("2d*1d", 900)])
def test_levels_enumerate_every_problem_with_the_right_answer(spec, count):
    problems = Level.parse(spec).problems()
    assert len(problems) == count == len({p for p, _ in problems})
    for prompt, answer in problems[:: max(1, count // 200)]:
        assert int(answer) == eval(prompt[:-1])  # the prompt is a Python expression ending in '='


def test_bad_level_spec_is_rejected():
    with pytest.raises(ValueError, match="bad level spec"):
        Level.parse("2d/1d")


def test_pools_are_disjoint_stable_and_sized_by_fraction():
    levels = ["1d+-*1d", "2d*1d"]
    a = build_pools(levels, seed=0, val_fraction=0.2, demo_fraction=0.3)
    b = build_pools(levels, seed=0, val_fraction=0.2, demo_fraction=0.3)
    sets = {k: {r["prompt"] for r in v} for k, v in a.items()}
    assert sets == {k: {r["prompt"] for r in v} for k, v in b.items()}
    assert not (sets["val"] & sets["demo"]) and not (sets["val"] & sets["rl"]) and not (sets["demo"] & sets["rl"])
    total = sum(len(v) for v in sets.values())
    assert total == 1200
    assert abs(len(sets["val"]) / total - 0.2) < 0.05 and abs(len(sets["demo"]) / total - 0.3) < 0.05
    assert pool_of("12*7=", 0, 0.2, 0.3) == pool_of("12*7=", 0, 0.2, 0.3)
    other = build_pools(levels, seed=1, val_fraction=0.2, demo_fraction=0.3)
    assert {r["prompt"] for r in other["val"]} != sets["val"]


def test_sample_rows_gives_each_level_an_equal_share():
    pools = build_pools(["1d+-*1d", "2d+-2d", "2d*1d"], 0, 0.2, 0.3)
    rows = sample_rows(pools["rl"], 3, 300, np.random.default_rng(0))
    counts = np.bincount([r["level"] for r in rows], minlength=3)
    assert counts.tolist() == [100, 100, 100]
    assert len({r["prompt"] for r in rows}) == 300  # no duplicates while a level's pool lasts


def test_score_is_exact_match():
    assert score("84", "84") == 1.0
    assert score("084", "84") == 0.0 and score("", "84") == 0.0 and score("-22", "-22") == 1.0


def test_load_rows_accepts_jsonl_and_verl_parquet(tmp_path):
    tok = CharTokenizer()
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "3+4=", "answer": "7"}) + "\n" + json.dumps({"prompt": "9*9=", "ground_truth": 81, "level": 2}) + "\n")
    rows = load_rows(str(p), tok, 7, 3)
    assert rows == [{"prompt": "3+4=", "answer": "7", "level": 0}, {"prompt": "9*9=", "answer": "81", "level": 2}]
    q = tmp_path / "d.parquet"
    pd.DataFrame({"prompt": ["5-7="], "reward_model": [{"style": "rule", "ground_truth": "-2"}]}).to_parquet(q)
    assert load_rows(str(q), tok, 7, 3) == [{"prompt": "5-7=", "answer": "-2", "level": 0}]


@pytest.mark.parametrize("content,needle", [
    ('{"prompt": "3+4="}\n', "line 1: field 'answer': no ground truth"),
    ('{"prompt": "3+4=", "answer": "7"}\n\n{"prompt": "1+1=", "answer": ""}\n', "line 3: field 'answer': no ground"),
    ('{"prompt": "", "answer": "7"}\n', "line 1: field 'prompt'"),
    ('{"prompt": "3 plus 4", "answer": "7"}\n', "line 1: field 'prompt': has characters outside"),
    ('{"prompt": "123+456=", "answer": "579"}\n', "line 1: field 'prompt': is 8 characters"),
    ('{"prompt": "3+4=", "answer": "seven"}\n', "line 1: field 'answer'"),
    ('{"prompt": "3+4=", "answer": "7"}\n{not json\n', "line 2: malformed JSON"),
    ('', "has no rows"),
])
def test_load_rows_names_file_row_and_field(tmp_path, content, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DataError) as err:
        load_rows(str(p), CharTokenizer(), 7, 3)
    assert str(p) in str(err.value) and needle in str(err.value)


def test_load_rows_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"), CharTokenizer(), 7, 3)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="cannot read dataset file"):
        load_rows(str(bad), CharTokenizer(), 7, 3)


def test_load_rows_names_the_row_of_a_parquet_file(tmp_path):
    q = tmp_path / "bad.parquet"
    pd.DataFrame({"prompt": ["5-7=", "1+1="], "answer": ["-2", "two"]}).to_parquet(q)
    with pytest.raises(DataError, match=r"bad\.parquet, row 1: field 'answer': 'two' is not an integer") as err:
        load_rows(str(q), CharTokenizer(), 7, 3)
    assert (err.value.row, err.value.line, err.value.field) == (1, None, "answer")
