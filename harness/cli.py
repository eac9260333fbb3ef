"""The ``lvsconf`` command line (subcommands are added by the parts that own them)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("lvsconf: no subcommands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
