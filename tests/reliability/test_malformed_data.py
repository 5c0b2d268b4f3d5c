"""Malformed data: every broken file is refused before work starts, with file, row/line and field named,
and nothing is created or modified — for every entry point that reads user data (see ``malformed.py``).

The CLIs run in subprocesses (the user path); the local engine, whose import takes ~5 s, runs its CLI ``main`` in
this process. ``data/score_perplexity.py`` (imports torch + transformers) is covered by one case here and by all
of its cases in ``bench/reliability.py``. Every entry point also gets a control: the same command on a valid file
succeeds and writes its outputs, so a refusal means the file was refused, not that the command cannot run.
"""

from __future__ import annotations

import pytest

import malformed as M

IN_PROCESS = {"local_train"}
FAST_PPL = {"verl_ppl/missing_ground_truth.parquet"}
BUG_ENCODING = ("BUG e3/tasks/arithmetic.py load_rows: a JSONL training file that is not UTF-8 (latin-1 byte in "
                "one row, or UTF-16) is refused as 'cannot read dataset file (UnicodeDecodeError ...)' without the "
                "row: the whole-file read catches the decode error instead of naming the line, as e3.io does")
KNOWN_BUGS: dict = {}


def _params():
    out = []
    for case in M.corpus():
        marks = []
        if case.entry == "verl_ppl":
            if case.name not in FAST_PPL:
                continue
            marks.append(pytest.mark.slow)
        if case.name in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case.name]))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return M.model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def keep_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_corpus_covers_every_entry_point_and_fault():
    cases = M.corpus()
    assert {c.entry for c in cases} == set(M.ENTRIES)
    for entry in M.ENTRIES:
        kinds = {c.kind for c in cases if c.entry == entry}
        assert {"missing_column", "truncated", "latin1", "utf16", "not_object"} <= kinds, entry
        assert kinds & {"wrong_type", "not_binary"}, entry
    for entry in ("local_train", "verl_validate", "infer", "eval"):
        assert "missing_ground_truth" in {c.kind for c in cases if c.entry == entry}
    assert {c.entry for c in cases if c.suffix == ".parquet"} == set(M.PARQUET_ENTRIES)
    assert [c.data for c in cases] == [c.data for c in M.corpus()]  # deterministic
    # the faults are real: the latin-1 file does not decode as UTF-8, the truncated ones are cut
    for c in cases:
        if c.kind in ("latin1", "utf16"):
            with pytest.raises(UnicodeDecodeError):
                c.data.decode("utf-8")
        if c.kind == "truncated" and c.suffix == ".jsonl":
            assert not c.data.endswith(b"\n")


@pytest.mark.parametrize("case", _params())
def test_malformed_file_is_refused_with_its_location_and_nothing_is_written(case, model, tmp_path,
                                                                             keep_torch_threads):
    r = M.check(case, tmp_path / "work", model, in_process=case.entry in IN_PROCESS)
    assert r.refused, f"accepted silently (rc {r.rc}): {r.message}"
    assert not r.traceback, r.message
    assert r.untouched, f"outputs touched: {r.changes}"
    assert r.named_file, r.message
    assert r.named_where, f"row {case.row} / line {case.line} not named: {r.message}"
    assert r.named_field, f"field {case.field!r} not named: {r.message}"


@pytest.mark.parametrize("entry,parquet", [
    pytest.param(e, p, marks=[pytest.mark.slow] if e == "verl_ppl" else [], id=f"{e}{'-parquet' if p else ''}")
    for e in M.ENTRIES for p in ((False, True) if e in ("local_train", "verl_validate") else (False,))])
def test_control_valid_file_is_accepted_and_writes_outputs(entry, parquet, model, tmp_path, keep_torch_threads):
    rc, touched, out = M.control(entry, tmp_path / "work", model, in_process=entry in IN_PROCESS, parquet=parquet)
    assert rc == 0, out
    want = {"local_train": ["run"], "verl_validate": [], "verl_ppl": ["existing.parquet"], "infer": ["new.out"],
            "eval": ["existing.out", "new.summary.json"], "metric": ["existing.out", "new.png"]}[entry]
    assert sorted(touched) == sorted(want), (touched, out)
    if entry == "verl_validate":
        assert f"ok {tmp_path / 'work'}" in out and f"{M.N_ROWS} rows" in out
