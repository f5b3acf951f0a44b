"""``python -m handlers --fd N``: the worker process started by the supervisor."""

from __future__ import annotations

import sys

from handlers.runtime import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
