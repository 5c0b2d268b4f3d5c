"""verl parquet rows for math RL: build them, validate every row (file, row, field), read and write atomically.

The row schema is what verl 0.9.1's ``RLHFDataset`` and our reward read:

    data_source   non-empty str                  reward routing and per-source validation metrics
    prompt        non-empty list of chat messages {"role": str, "content": non-empty str}
    ability       str
    reward_model  {"style": str, "ground_truth": non-empty str}
    extra_info    {"split": str, "index": int}   index unique within a file: E3 tracks difficulty per index
                  (+ optional "perplexity": finite float > 0, the PREPO offline curriculum's score)

Bad input stops with an ``e3.io.DataError`` naming the file, where (``line N``, 1-based, in a JSON-lines file;
``row N``, 0-based, in a parquet file or a list of rows) and the field; writes go through ``e3.io.atomic_path``, so
a failed write leaves nothing half-written.
"""

from __future__ import annotations

import math
from numbers import Number
from pathlib import Path
from typing import Iterable

from e3.io import DataError, atomic_write_bytes, iter_jsonl

DEFAULT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def make_row(question: str, answer, *, data_source: str, split: str, index: int,
             instruction: str | None = DEFAULT_INSTRUCTION, ability: str = "math", extra: dict | None = None) -> dict:
    """One verl row: the question (+ instruction) as a single user message, the answer as ground truth."""
    content = question.strip() if not instruction else f"{question.strip()} {instruction}"
    info = {"split": split, "index": int(index), **(extra or {})}
    return {"data_source": data_source, "prompt": [{"role": "user", "content": content}], "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": str(answer).strip()}, "extra_info": info}


def _text(value, path, where, field, nonempty=True) -> str:
    if not isinstance(value, str):
        problem = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise DataError(path, field=field, message=problem, **where)
    if nonempty and not value.strip():
        raise DataError(path, field=field, message="empty", **where)
    return value


def _mapping(row_obj, key, path, where) -> dict:
    value = row_obj.get(key)
    if not isinstance(value, dict):
        problem = "missing" if value is None else f"expected a mapping, got {type(value).__name__}"
        raise DataError(path, field=key, message=problem, **where)
    return value


def _where(row: int | None, line: int | None) -> dict:
    return {"line": line} if line is not None else {"row": row}


def check_row(obj, path, row: int | None = None, *, line: int | None = None) -> dict:
    """Check one row against the schema above; return it unchanged. Errors name ``line`` if given, else ``row``."""
    where = _where(row, line)
    if not isinstance(obj, dict):
        raise DataError(path, message=f"expected a mapping, got {type(obj).__name__}", **where)
    _text(obj.get("data_source"), path, where, "data_source")
    prompt = obj.get("prompt")
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise DataError(path, field="prompt", message="missing" if prompt is None else
                        "expected a non-empty list of messages", **where)
    for j, message in enumerate(prompt):
        if not isinstance(message, dict):
            raise DataError(path, field=f"prompt[{j}]", message="expected a {role, content} message", **where)
        _text(message.get("role"), path, where, f"prompt[{j}].role")
        _text(message.get("content"), path, where, f"prompt[{j}].content")
    _text(obj.get("ability"), path, where, "ability", nonempty=False)
    reward = _mapping(obj, "reward_model", path, where)
    _text(reward.get("style"), path, where, "reward_model.style")
    _text(reward.get("ground_truth"), path, where, "reward_model.ground_truth")
    extra = _mapping(obj, "extra_info", path, where)
    _text(extra.get("split"), path, where, "extra_info.split")
    index = extra.get("index")
    if isinstance(index, bool) or not isinstance(index, Number) or int(index) != index:
        problem = "missing" if index is None else f"expected an integer, got {index!r}"
        raise DataError(path, field="extra_info.index", message=problem, **where)
    ppl = extra.get("perplexity")
    if ppl is not None and (isinstance(ppl, bool) or not isinstance(ppl, Number) or not math.isfinite(ppl) or ppl <= 0):
        raise DataError(path, field="extra_info.perplexity", message=f"expected a finite number > 0, got {ppl!r}",
                        **where)
    return obj


def check_rows(rows: Iterable[dict], path, unique_index: bool = True, lines: list[int] | None = None) -> list[dict]:
    """Validate every row; with ``unique_index`` also that no two rows share ``extra_info.index``.

    Errors name ``row i`` (0-based), or ``line lines[i]`` when the rows' line numbers are given (JSON lines)."""
    rows = list(rows)
    if not rows:
        raise DataError(path, message="no rows")
    seen: dict[int, dict] = {}
    for i, obj in enumerate(rows):
        line = None if lines is None else lines[i]
        check_row(obj, path, i, line=line)
        index = int(obj["extra_info"]["index"])
        if unique_index and index in seen:
            first = " ".join(f"{k} {v}" for k, v in seen[index].items())
            raise DataError(path, field="extra_info.index", message=f"{index} repeats {first} (indices must be "
                            "unique)", **_where(i, line))
        seen.setdefault(index, _where(i, line))
    return rows


def read_located(path) -> tuple[list[dict], list[int] | None]:
    """``(rows, lines)``: the rows of a ``.parquet``, ``.jsonl`` or ``.json`` (JSON lines) file as plain dicts and
    lists (not validated), and for JSON lines each row's 1-based line (None for parquet: rows are 0-based)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, message="file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist(), None
        except Exception as e:  # not parquet, truncated, unreadable
            raise DataError(path, message=f"unreadable parquet ({type(e).__name__}: {e})") from None
    if path.suffix in (".jsonl", ".json"):
        located = list(iter_jsonl(path))
        return [obj for _, obj in located], [line for line, _ in located]
    raise DataError(path, message="unsupported file type (expected .parquet, .jsonl or .json)")


def read_rows(path) -> list[dict]:
    """Rows of a ``.parquet``, ``.jsonl`` or ``.json`` (JSON lines) file (see :func:`read_located`)."""
    return read_located(path)[0]


def check_file(path, unique_index: bool = True) -> list[dict]:
    """Read and validate a whole data file; returns its rows."""
    rows, lines = read_located(path)
    return check_rows(rows, path, unique_index, lines)


def write_rows(rows: Iterable[dict], path) -> Path:
    """Validate ``rows`` and write them as parquet atomically (``e3.io.atomic_path``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = check_rows(rows, path)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def with_index(rows: Iterable[dict], split: str, start: int = 0) -> list[dict]:
    """Give rows that lack them ``extra_info.split`` and a fresh, unique ``extra_info.index`` (row order)."""
    out = []
    for k, obj in enumerate(rows):
        extra = dict(obj.get("extra_info") or {})
        extra["split"] = extra.get("split") or split
        extra["index"] = start + k
        out.append({**obj, "extra_info": extra})
    return out
