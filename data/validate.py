"""Check verl data files row by row: ``python data/validate.py FILE [FILE ...]``.

Prints ``ok FILE: N rows`` per file, or the first bad row as ``FILE, line N: field 'F': problem`` (JSON lines,
1-based) or ``FILE, row R: ...`` (parquet, 0-based) and exits 1.
The checks are ``e3.data.check_file`` (the schema the e3 trainer, the local engine and inference rely on).
"""

from __future__ import annotations

import sys

from e3.data import check_file
from e3.io import DataError


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            rows = check_file(path)
        except DataError as e:
            print(f"error {e}", file=sys.stderr)
            status = 1
        else:
            print(f"ok {path}: {len(rows)} rows")
    return status


if __name__ == "__main__":
    sys.exit(main())
