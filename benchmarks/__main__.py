"""``python -m benchmarks``: see benchmarks/run.py."""

from __future__ import annotations

import sys

from .run import main

# The guard matters: dask and multiprocessing may start processes that import this module.
if __name__ == "__main__":
    sys.exit(main())
