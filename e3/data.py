"""verl parquet rows for math RL: build them, validate every row (file, row, field), read and write atomically.

The row schema is what verl 0.9.1's ``RLHFDataset`` and our reward read:

    data_source   non-empty str                  reward routing and per-source validation metrics
    prompt        non-empty list of chat messages {"role": str, "content": non-empty str}
    ability       str
    reward_model  {"style": str, "ground_truth": non-empty str}
    extra_info    {"split": str, "index": int}   index unique within a file: E3 tracks difficulty per index
                  (+ optional "perplexity": finite float > 0, the PREPO offline curriculum's score)

Bad input stops with a ``RowError`` (a ``e3.io.DataError``) naming the file, the 0-based row and the field; writes
go through a temporary file and ``os.replace``, so a failed write leaves nothing half-written.
"""

from __future__ import annotations

import math
from numbers import Number
from pathlib import Path
from typing import Iterable

from e3.io import DataError, atomic_write_bytes, iter_jsonl

DEFAULT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


class RowError(DataError):
    """Bad row: ``path``, 0-based ``row`` and ``field`` (dotted, e.g. ``reward_model.ground_truth``)."""

    def __init__(self, path, row: int | None, field: str | None, message: str):
        self.path, self.line, self.row, self.field = str(path), None, row, field
        where = str(path) + (f", row {row}" if row is not None else "")
        what = f"field '{field}': " if field is not None else ""
        ValueError.__init__(self, f"{where}: {what}{message}")


def make_row(question: str, answer, *, data_source: str, split: str, index: int,
             instruction: str | None = DEFAULT_INSTRUCTION, ability: str = "math", extra: dict | None = None) -> dict:
    """One verl row: the question (+ instruction) as a single user message, the answer as ground truth."""
    content = question.strip() if not instruction else f"{question.strip()} {instruction}"
    info = {"split": split, "index": int(index), **(extra or {})}
    return {"data_source": data_source, "prompt": [{"role": "user", "content": content}], "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": str(answer).strip()}, "extra_info": info}


def _text(value, path, row, field, nonempty=True) -> str:
    if not isinstance(value, str):
        problem = "missing" if value is None else f"expected a string, got {type(value).__name__}"
        raise RowError(path, row, field, problem)
    if nonempty and not value.strip():
        raise RowError(path, row, field, "empty")
    return value


def _mapping(row_obj, key, path, row) -> dict:
    value = row_obj.get(key)
    if not isinstance(value, dict):
        problem = "missing" if value is None else f"expected a mapping, got {type(value).__name__}"
        raise RowError(path, row, key, problem)
    return value


def validate_row(obj, path, row: int) -> dict:
    """Check one row against the schema above; return it unchanged."""
    if not isinstance(obj, dict):
        raise RowError(path, row, None, f"expected a mapping, got {type(obj).__name__}")
    _text(obj.get("data_source"), path, row, "data_source")
    prompt = obj.get("prompt")
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise RowError(path, row, "prompt", "missing" if prompt is None else "expected a non-empty list of messages")
    for j, message in enumerate(prompt):
        if not isinstance(message, dict):
            raise RowError(path, row, f"prompt[{j}]", "expected a {role, content} message")
        _text(message.get("role"), path, row, f"prompt[{j}].role")
        _text(message.get("content"), path, row, f"prompt[{j}].content")
    _text(obj.get("ability"), path, row, "ability", nonempty=False)
    reward = _mapping(obj, "reward_model", path, row)
    _text(reward.get("style"), path, row, "reward_model.style")
    _text(reward.get("ground_truth"), path, row, "reward_model.ground_truth")
    extra = _mapping(obj, "extra_info", path, row)
    _text(extra.get("split"), path, row, "extra_info.split")
    index = extra.get("index")
    if isinstance(index, bool) or not isinstance(index, Number) or int(index) != index:
        problem = "missing" if index is None else f"expected an integer, got {index!r}"
        raise RowError(path, row, "extra_info.index", problem)
    ppl = extra.get("perplexity")
    if ppl is not None and (isinstance(ppl, bool) or not isinstance(ppl, Number) or not math.isfinite(ppl) or ppl <= 0):
        raise RowError(path, row, "extra_info.perplexity", f"expected a finite number > 0, got {ppl!r}")
    return obj


def validate_rows(rows: Iterable[dict], path, unique_index: bool = True) -> list[dict]:
    """Validate every row; with ``unique_index`` also that no two rows share ``extra_info.index``."""
    rows = list(rows)
    if not rows:
        raise RowError(path, None, None, "no rows")
    seen: dict[int, int] = {}
    for i, obj in enumerate(rows):
        validate_row(obj, path, i)
        index = int(obj["extra_info"]["index"])
        if unique_index and index in seen:
            raise RowError(path, i, "extra_info.index", f"{index} repeats row {seen[index]} (indices must be unique)")
        seen.setdefault(index, i)
    return rows


def read_rows(path) -> list[dict]:
    """Rows of a ``.parquet``, ``.jsonl`` or ``.json`` (JSON lines) file, as plain dicts and lists (not validated)."""
    path = Path(path)
    if not path.is_file():
        raise RowError(path, None, None, "file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # not parquet, truncated, unreadable
            raise RowError(path, None, None, f"unreadable parquet ({type(e).__name__}: {e})") from None
    if path.suffix in (".jsonl", ".json"):
        return [obj for _, obj in iter_jsonl(path)]
    raise RowError(path, None, None, "unsupported file type (expected .parquet, .jsonl or .json)")


def validate_file(path, unique_index: bool = True) -> list[dict]:
    """Read and validate a whole data file; returns its rows."""
    return validate_rows(read_rows(path), path, unique_index)


def write_rows(rows: Iterable[dict], path) -> Path:
    """Validate ``rows`` and write them as parquet via a temporary file + ``os.replace``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = validate_rows(rows, path)
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


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces matched) or ``\\boxed x`` in ``text``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox")
    if text[i:i + 1] == " ":  # MATH's "\boxed 2": one token, up to whitespace or the closing $
        token = text[i + 1:].split("$", 1)[0].split()
        return token[0].strip() if token else None
    if text[i:i + 1] != "{":
        return None
    depth, j = 1, i + 1
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i + 1:j - 1].strip() if depth == 0 else None
