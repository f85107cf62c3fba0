"""`python -m loldu_lightning.evaluate <evaluation> ...`: one sub-command per registered evaluation."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import EVALUATIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loldu_lightning.evaluate", description=__doc__)
    commands = parser.add_subparsers(dest="evaluation", required=True, metavar="EVALUATION")
    modules = {}
    for name, module_path in sorted(EVALUATIONS.items()):
        module = importlib.import_module(module_path)
        modules[name] = module
        module.add_arguments(commands.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    results = modules[args.evaluation].run(args)
    print(json.dumps(results, indent=2))
    return 0


def run_cli(argv: list[str] | None = None) -> int:
    """main() with user errors (a missing folder, an adapter for another model) as one `error:` line, exit 2."""
    from ..cli.errors import exit_on_user_error

    try:
        return main(argv)
    except Exception as error:
        exit_on_user_error(error)
        raise


if __name__ == "__main__":
    sys.exit(run_cli())
