"""A corpus of malformed data files for every entry point, and the check that each is refused cleanly.

``build_corpus(root)`` writes broken JSONL / parquet files — a missing column, a wrong type, an empty prompt (or
empty responses / scores), a missing ground truth, a duplicate id, a line that is not an object, a truncated file,
wrong encodings (a latin-1 byte in one row; a whole file in UTF-16) — for each entry point that reads user data:

    local_train    python -m e3.engines.local ... data.train_file=FILE     (prompt, answer[, level]; "row" 0-based)
    verl_validate  python data/validate.py FILE                            (verl rows via e3.data; "row" 0-based)
    verl_ppl       python data/score_perplexity.py --input FILE --output O (the same rows; writes a parquet)
    infer          python -m e3.main_infer MODEL --data FILE --output O    (prompt, answer[, source, id]; "line")
    eval           python -m e3.main_eval --input FILE --output O --summary S
    metric         python -m e3.main_metric --input FILE --output O --plot P

Each case knows where the fault is (``line``: 1-based physical line, ``row``: 0-based record) and which field is at
fault (None where no field applies: an undecodable line, a truncated parquet). ``check(case, ...)`` runs the real
CLI in a subprocess (or its ``main`` in-process, for the slow-to-import local engine in the fast test) in a fresh
work directory holding the input, one pre-existing output (old bytes, mtime in the past) and one output path that
does not exist, and reports: refused (non-zero exit), no traceback, the message names the file, the row/line
and the field, and the work directory is byte-for-byte unchanged (nothing created, modified or removed — the
input included). ``control(entry, ...)`` runs the same command on a valid file and must succeed and write its
outputs, so that a refusal is not just a command that cannot work at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 10
BAD = 3  # 0-based row that carries the fault (line 4); truncation hits the last row
ENTRIES = ("local_train", "verl_validate", "verl_ppl", "infer", "eval", "metric")
OLD_MTIME = 1_000_000_000  # 2001: a pre-existing output's mtime, so that any rewrite shows


@dataclass
class Case:
    entry: str
    kind: str
    suffix: str
    data: bytes = field(repr=False)
    row: int | None          # 0-based record index of the fault (None: file-level)
    field: str | None        # field named in the error (None: no field applies)
    path: Path | None = None  # where build_corpus wrote it

    @property
    def line(self) -> int | None:
        return None if self.row is None else self.row + 1

    @property
    def name(self) -> str:
        return f"{self.entry}/{self.kind}{self.suffix}"


@dataclass
class Result:
    case: str
    rc: int
    refused: bool
    traceback: bool
    named_file: bool
    named_where: bool
    named_field: bool
    untouched: bool
    changes: list = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def located(self) -> bool:
        return self.named_file and self.named_where and self.named_field

    @property
    def ok(self) -> bool:
        return self.refused and not self.traceback and self.located and self.untouched


# ------------------------------------------------------------------------------------------------ valid rows
def good_rows(entry: str) -> list[dict]:
    if entry == "local_train":
        return [{"prompt": f"{10 + i}+{i}=", "answer": str(10 + 2 * i), "level": i % 2} for i in range(N_ROWS)]
    if entry in ("verl_validate", "verl_ppl"):
        from e3.data import make_row

        return [make_row(f"What is {i} + {i}?", 2 * i, data_source="toy", split="train", index=i)
                for i in range(N_ROWS)]
    if entry == "infer":
        return [{"id": f"p-{i}", "source": "toy", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)}
                for i in range(N_ROWS)]
    if entry == "eval":
        return [{"id": f"p-{i}", "source": "toy", "prompt": f"What is {i} + {i}?", "answer": str(2 * i),
                 "responses": [f"\\boxed{{{2 * i}}}", "\\boxed{-1}"]} for i in range(N_ROWS)]
    if entry == "metric":
        return [{"id": f"p-{i}", "source": "toy", "scores": [1, 0, i % 2, 1]} for i in range(N_ROWS)]
    raise ValueError(entry)


# The faults, per entry point: kind -> (mutation of row BAD, field named). The field is what a user must be told.
def _set(path: str, value):
    def mutate(row: dict) -> dict:
        keys = path.split(".")
        obj = row
        for k in keys[:-1]:
            obj = obj[k]
        if value is _DROP:
            obj.pop(keys[-1], None)
        else:
            obj[keys[-1]] = value
        return row
    return mutate


_DROP = object()

ROW_FAULTS = {
    "local_train": {"missing_column": (_set("prompt", _DROP), "prompt"),
                    "wrong_type": (_set("prompt", 1234), "prompt"),
                    "empty_prompt": (_set("prompt", ""), "prompt"),
                    "missing_ground_truth": (_set("answer", _DROP), "answer"),
                    "wrong_type_level": (_set("level", "hard"), "level")},
    "verl_validate": {"missing_column": (_set("data_source", _DROP), "data_source"),
                      "wrong_type": (_set("extra_info.index", "seven"), "extra_info.index"),
                      "empty_prompt": (lambda r: {**r, "prompt": [{"role": "user", "content": "   "}]},
                                       "prompt[0].content"),
                      "missing_ground_truth": (_set("reward_model.ground_truth", _DROP), "reward_model.ground_truth"),
                      "duplicate_id": (_set("extra_info.index", 0), "extra_info.index")},
    "infer": {"missing_column": (_set("prompt", _DROP), "prompt"),
              "wrong_type": (_set("answer", {"value": 6}), "answer"),
              "empty_prompt": (_set("prompt", "   "), "prompt"),
              "missing_ground_truth": (_set("answer", _DROP), "answer"),
              "duplicate_id": (_set("id", "p-0"), "id")},
    "eval": {"missing_column": (_set("responses", _DROP), "responses"),
             "wrong_type": (_set("responses", ["\\boxed{6}", 6]), "responses[1]"),
             "empty_responses": (_set("responses", []), "responses"),
             "missing_ground_truth": (_set("answer", _DROP), "answer"),
             "duplicate_id": (_set("id", "p-0"), "id")},
    "metric": {"missing_column": (_set("scores", _DROP), "scores"),
               "wrong_type": (_set("scores", [1, "1", 0, 0]), "scores[1]"),
               "empty_scores": (_set("scores", []), "scores"),
               "not_binary": (_set("scores", [1, 0, 2, 0]), "scores[2]"),
               "duplicate_id": (_set("id", "p-0"), "id")},
}
ROW_FAULTS["verl_ppl"] = {k: ROW_FAULTS["verl_validate"][k] for k in ("missing_column", "missing_ground_truth")}
# parquet files for the entry points that read parquet: a null (= missing) ground truth / empty prompt in row BAD,
# a column missing from the whole file (row 0), a wrong column type (row 0)
PARQUET_FAULTS = {
    "local_train": {"missing_column": (lambda rows: [{k: v for k, v in r.items() if k != "answer"} for r in rows],
                                       0, "answer"),
                    "empty_prompt": (lambda rows: _at(rows, "prompt", ""), BAD, "prompt"),
                    "wrong_type": (lambda rows: [{**r, "prompt": 1000 + i} for i, r in enumerate(rows)], 0, "prompt")},
    "verl_validate": {"missing_column": (lambda rows: [{k: v for k, v in r.items() if k != "reward_model"}
                                                       for r in rows], 0, "reward_model"),
                      "missing_ground_truth": (lambda rows: _at(rows, "reward_model",
                                                                {"style": "rule", "ground_truth": None}),
                                               BAD, "reward_model.ground_truth"),
                      "wrong_type": (lambda rows: [{**r, "prompt": "What is 1 + 1?"} for r in rows], 0, "prompt")},
}
PARQUET_FAULTS["verl_ppl"] = {k: PARQUET_FAULTS["verl_validate"][k] for k in ("missing_ground_truth", "wrong_type")}
PARQUET_ENTRIES = ("local_train", "verl_validate", "verl_ppl")
# Faults of the bytes, not the fields: (kind, row of the fault or None for file-level)
BYTE_FAULTS = ("not_object", "truncated", "latin1", "utf16")


def _at(rows: list[dict], key: str, value) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[BAD][key] = value
    return rows


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def _with_text(row: dict, entry: str, text: str) -> dict:
    """``row`` with ``text`` inside a free-text field (prompt or response) — for the encoding faults."""
    row = json.loads(json.dumps(row))
    if entry == "local_train":
        row["note"] = text  # an extra column: the prompt must stay inside the task's vocabulary
    elif entry in ("verl_validate", "verl_ppl"):
        row["prompt"][0]["content"] += " " + text
    elif entry == "metric":
        row["note"] = text
    else:
        row["prompt"] = row["prompt"] + " " + text
    return row



def corpus() -> list[Case]:
    """Every malformed file of every entry point, in memory (the same bytes every time)."""
    cases = []

    def put(entry, kind, suffix, data: bytes, row, fld):
        cases.append(Case(entry, kind, suffix, data, row, fld))

    for entry in ENTRIES:
        good = good_rows(entry)
        for kind, (mutate, fld) in ROW_FAULTS[entry].items():
            rows = json.loads(json.dumps(good))
            rows[BAD] = mutate(rows[BAD])
            put(entry, kind, ".jsonl", _jsonl(rows), BAD, fld)
        # bytes: a line that is a JSON array, a file cut inside its last line, latin-1 in one row, all UTF-16
        lines = _jsonl(good).split(b"\n")[:-1]
        lines[BAD] = b"[1, 2, 3]"
        put(entry, "not_object", ".jsonl", b"\n".join(lines) + b"\n", BAD, None)
        full = _jsonl(good)
        last_start = full.rstrip(b"\n").rfind(b"\n") + 1
        put(entry, "truncated", ".jsonl", full[:last_start + (len(full) - last_start) // 2], N_ROWS - 1, None)
        rows = [_with_text(r, entry, "plain") for r in good]
        rows[BAD] = _with_text(good[BAD], entry, "Größe")
        put(entry, "latin1", ".jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in rows).encode("latin-1"), BAD, None)
        put(entry, "utf16", ".jsonl", _jsonl(good).decode("utf-8").encode("utf-16"), 0, None)
        if entry in PARQUET_ENTRIES:
            for kind, (make, row, fld) in PARQUET_FAULTS[entry].items():
                put(entry, kind, ".parquet", _parquet(make(json.loads(json.dumps(good)))), row, fld)
            data = _parquet(good)
            put(entry, "truncated", ".parquet", data[:len(data) // 2], None, None)
    return cases


def build_corpus(root) -> list[Case]:
    """Write the corpus under ``root/<entry>/<kind><suffix>`` and return its cases (with ``path`` set)."""
    out = []
    for case in corpus():
        path = Path(root) / case.entry / f"{case.kind}{case.suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        case.path = path
        out.append(case)
    return out


# ------------------------------------------------------------------------------------------------ commands
LOCAL_CONFIG = {
    "threads": 1, "device": "cpu", "plots": False,
    "task": {"levels": ["2d+-1d", "2d*1d"], "train_size": 24, "val_size": 16},
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64},
    "warm_start": {"steps": 0},
    "rollout": {"batch_size": 4, "n": 4},
    "trainer": {"total_steps": 1, "save_every": 1, "val_every": 1},
    "val": {"n_samples": 1, "greedy": False},
}


def command(entry: str, data: Path, work: Path, model: Path) -> tuple[list[str], list[Path], list[Path]]:
    """(argv after the interpreter, outputs that exist beforehand, outputs that must not appear)."""
    old, new = work / "existing.out", work / "new.out"
    if entry == "local_train":
        cfg = json.loads(json.dumps(LOCAL_CONFIG))
        cfg["warm_start"]["cache_dir"] = str(work / "ws_cache")
        cfg_path = work / "tiny.yaml"
        from omegaconf import OmegaConf

        cfg_path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        return (["-m", "e3.engines.local", "--config", str(cfg_path), "--run-dir", str(work / "run"), "--quiet",
                 f"data.train_file={data}"], [], [work / "run", work / "ws_cache"])
    if entry == "verl_validate":
        return [str(ROOT / "data" / "validate.py"), str(data)], [], []
    if entry == "verl_ppl":
        return ([str(ROOT / "data" / "score_perplexity.py"), "--model", str(model), "--input", str(data),
                 "--output", str(old.with_suffix(".parquet")), "--device", "cpu", "--dtype", "float32"],
                [old.with_suffix(".parquet")], [])
    if entry == "infer":
        return (["-m", "e3.main_infer", str(model), "--data", str(data), "--output", str(new), "--n", "1",
                 "--max-new-tokens", "2", "--threads", "1", "--quiet"], [], [new])
    if entry == "eval":
        summary = work / "new.summary.json"
        return (["-m", "e3.main_eval", "--input", str(data), "--output", str(old), "--summary", str(summary),
                 "--workers", "1", "--quiet"], [old], [summary])
    if entry == "metric":
        return (["-m", "e3.main_metric", "--input", str(data), "--k", "1", "2", "--output", str(old),
                 "--plot", str(work / "new.png")], [old], [work / "new.png"])
    raise ValueError(entry)


def snapshot(directory: Path) -> dict:
    """Every path under ``directory``: kind, size, mtime and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), directory)] = ("dir",)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, directory)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _prepare(entry: str, source: Path, work: Path, model: Path):
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    data = work / f"input{source.suffix}"
    shutil.copyfile(source, data)
    argv, existing, absent = command(entry, data, work, model)
    for p in existing:
        p.write_bytes(b"output of an earlier run: must survive untouched\n")
        os.utime(p, ns=(OLD_MTIME * 10**9, OLD_MTIME * 10**9))
    return data, argv, existing, absent


def _run(argv: list[str], in_process: bool, timeout: float) -> tuple[int, str]:
    if not in_process:
        p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout + p.stderr
    # in-process: the module's main(argv), as the CLI calls it (used for the local engine, slow to import)
    import importlib
    import traceback

    assert argv[0] == "-m"
    module = importlib.import_module(argv[1])
    if not hasattr(module, "main"):  # a package: what `python -m` runs is its __main__
        module = importlib.import_module(argv[1] + ".__main__")
    main = module.main
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        try:
            rc = main(argv[2:])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                buf.write(str(e.code) + "\n")
        except BaseException:  # an uncaught exception is what the CLI would show as a traceback
            buf.write(traceback.format_exc())
            rc = 1
    return int(rc or 0), buf.getvalue()


def _where_named(case: Case, message: str) -> bool:
    if case.row is None:
        return True
    return bool(re.search(rf"\b(line {case.line}|row {case.row})\b", message))


def _field_named(case: Case, message: str) -> bool:
    return case.field is None or case.field in message


def check(case: Case, work, model, in_process: bool = False, timeout: float = 300.0) -> Result:
    """Run ``case`` through its entry point in ``work`` (recreated) and judge the outcome."""
    work = Path(work)
    if case.path is None:
        case.path = work.parent / f"{work.name}-{case.kind}{case.suffix}"
        case.path.parent.mkdir(parents=True, exist_ok=True)
        case.path.write_bytes(case.data)
    data, argv, existing, absent = _prepare(case.entry, case.path, work, model)
    before = snapshot(work)
    t0 = time.monotonic()
    rc, out = _run(argv, in_process, timeout)
    seconds = time.monotonic() - t0
    after = snapshot(work)
    changes = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    msg = "\n".join(line for line in out.splitlines() if line.strip())[-2000:]
    return Result(case.name, rc, rc != 0, "Traceback (most recent call last)" in out, str(data) in out,
                  _where_named(case, out), _field_named(case, out), not changes, changes, msg, seconds)


def control(entry: str, work, model, in_process: bool = False, parquet: bool = False,
            timeout: float = 300.0) -> tuple[int, list[str], str]:
    """Run ``entry`` on a valid file: ``(rc, outputs that changed or appeared, output text)``."""
    work = Path(work)
    src = work.parent / f"{work.name}-valid{'.parquet' if parquet else '.jsonl'}"
    rows = good_rows(entry)
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(_parquet(rows) if parquet else _jsonl(rows))
    data, argv, existing, absent = _prepare(entry, src, work, model)
    before = snapshot(work)
    rc, out = _run(argv, in_process, timeout)
    after = snapshot(work)
    touched = [str(p.relative_to(work)) for p in existing + absent
               if any(k == str(p.relative_to(work)) or k.startswith(str(p.relative_to(work)) + os.sep)
                      for k in set(after) if before.get(k) != after.get(k))]
    return rc, touched, out[-2000:]


def model_dir(path) -> Path:
    """A tiny random causal LM + tokenizer built locally (tests/tiny_lm.py); nothing from a hub."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_lm import save_tiny_lm

    path = Path(path)
    if not (path / "config.json").is_file():
        save_tiny_lm(path)
    return path
