"""JSON-lines reading and writing that never half-writes and always says where bad input is.

- :class:`DataError` is the one error for bad input, located by file, line or row, and field;
- ``read_jsonl`` parses every line and raises :class:`DataError` naming file, line and field;
- :func:`atomic_path` is the one atomic write: the caller writes a temporary file in the target's directory (any
  writer: bytes, JSON, ``torch.save``, ``savefig``), which is fsynced and ``os.replace``d over the target (readers
  see the old or the new file, never a part); ``atomic_write_bytes`` / ``_text`` / ``_json`` / ``_jsonl`` use it;
- :class:`JsonlAppender` appends one complete line per record with flush + fsync (a SIGKILL loses at most
  the record being written, as an unterminated last line);
- ``drop_truncated_tail`` removes such an unterminated last line by an atomic rewrite, so a killed job can
  be resumed on a file that holds complete lines only.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input, located: ``path``; ``line`` or ``row`` (or neither); ``field`` (or None); what is wrong.

    Where in the file, counted the way a user looks it up:

    - ``line``: the 1-based line of a text file (JSON lines), blank lines included, as an editor or
      ``sed -n LINEp FILE`` counts;
    - ``row``: the 0-based position of a record in a table (parquet) or an in-memory list, as
      ``pyarrow.Table.slice(row, 1)`` or ``pandas.DataFrame.iloc[row]`` index it.

    ``field`` is dotted for nested fields (``reward_model.ground_truth``, ``prompt[0].content``). The message reads
    ``PATH, line N: field 'F': what`` (or ``row N``; parts without a value left out).
    """

    def __init__(self, path, line: int | None = None, field: str | None = None, message: str = "", *,
                 row: int | None = None):
        if line is not None and row is not None:
            raise TypeError("DataError: give a line (text files) or a row (tables), not both")
        self.path, self.line, self.row, self.field = str(path), line, row, field
        where = self.path + (f", line {line}" if line is not None else f", row {row}" if row is not None else "")
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}: {what}{message}")


def iter_jsonl(path, *, allow_truncated_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; every object must be a JSON object.

    With ``allow_truncated_tail`` an unterminated last line is skipped (the trace of a killed writer, whose
    records always end with a newline; :func:`drop_truncated_tail` removes it); anywhere else a bad line is a
    :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    with open(path, "rb") as fh:
        raw = fh.read()
    if not raw.strip():
        return
    lines = raw.split(b"\n")
    last_terminated = raw.endswith(b"\n")
    for i, chunk in enumerate(lines, start=1):
        if not chunk.strip():
            continue
        if allow_truncated_tail and i == len(lines) and not last_terminated:
            return
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, i, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, i, None, f"malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, i, None, f"expected a JSON object, got {type(obj).__name__}")
        yield i, obj


def read_jsonl(path, *, allow_truncated_tail: bool = False) -> list[dict]:
    """All objects of a JSON-lines file, in order (see :func:`iter_jsonl`, which also gives their line numbers)."""
    return [obj for _, obj in iter_jsonl(path, allow_truncated_tail=allow_truncated_tail)]


def require(obj: dict, field: str, kind, path, line: int, *, nonempty: bool = False):
    """Return ``obj[field]`` after checking presence, type (``kind`` or tuple of types) and non-emptiness."""
    if field not in obj or obj[field] is None:
        raise DataError(path, line, field, "missing")
    value = obj[field]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise DataError(path, line, field, f"expected {_names(kinds)}, got bool")
    if not isinstance(value, kinds):
        raise DataError(path, line, field, f"expected {_names(kinds)}, got {type(value).__name__}")
    if nonempty and (len(value) == 0 or (isinstance(value, str) and not value.strip())):
        raise DataError(path, line, field, "empty")
    return value


def _names(kinds) -> str:
    return " or ".join(k.__name__ for k in kinds)


def fsync_dir(directory) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Write ``path`` atomically: ``with atomic_path(p) as tmp: writer(tmp)``.

    ``tmp`` is a new empty file beside ``path`` (same directory, so ``os.replace`` is a rename on one filesystem;
    same suffix, so writers that choose a format by extension, like ``savefig``, keep working; created with the
    usual ``0o666 & ~umask`` permissions). When the block ends without an exception, ``tmp`` is fsynced and renamed
    over ``path`` and the directory is fsynced; on any exception (KeyboardInterrupt included) ``tmp`` is removed
    and ``path`` is left as it was. A kill at any moment leaves the old or the new file, at worst plus a stray
    hidden ``.NAME.*.tmpSUFFIX``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj: Any, indent: int | None = 2, default=None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=default) + "\n")


def dumps_line(obj: Any) -> str:
    """One JSON line (no embedded newline: ``json.dumps`` escapes them)."""
    return json.dumps(obj, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps_line(r) for r in rows))


def drop_truncated_tail(path) -> int:
    """If ``path`` ends with an unterminated line, rewrite it atomically without that line.

    Returns the number of bytes dropped (0 when the file is absent or already ends with a newline).
    """
    path = Path(path)
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return 0
    cut = raw.rfind(b"\n") + 1  # 0 when the whole file is one unterminated line
    atomic_write_bytes(path, raw[:cut])
    return len(raw) - cut


class JsonlAppender:
    """Append complete JSON lines durably: one ``write`` per record, then flush and fsync."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, obj: Any) -> None:
        self._fh.write(dumps_line(obj))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_cli(main) -> None:
    """Run a command-line ``main()``: its return code is the exit status; a ``DataError`` is one line, exit 1."""
    import sys

    try:
        sys.exit(main())
    except DataError as e:
        sys.exit(f"error: {e}")
