"""The ``edge-cloud`` command: the reference cloud. Not built yet (issue 3)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("edge-cloud: the reference cloud is not built yet (see issue 3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
