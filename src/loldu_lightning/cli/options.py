"""`python -m loldu_lightning.cli.options`: every option with its type, default and allowed values.

`--markdown` prints docs/options.md instead (the same schemas, as tables).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .help_text import options_listing, options_page

    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--markdown"]):
        print("usage: python -m loldu_lightning.cli.options [--markdown]", file=sys.stderr)
        return 2
    print(options_page() if args else options_listing(full_adapters=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
