"""``python -m e3.engines.local``: the local engine's command line (``e3.engines.local.engine.main``)."""

import sys

from e3.engines.local.engine import main

if __name__ == "__main__":
    sys.exit(main())
