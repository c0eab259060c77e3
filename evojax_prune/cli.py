"""The ``evojax-prune`` command.

Exit codes: 0 success; 2 a usage or input error (one line on stderr naming the
problem); 1 an internal error (set ``EVOJAX_PRUNE_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from evojax_prune import __version__

PROG = "evojax-prune"


class UsageError(Exception):
    """A problem with what the user asked for; reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _inspect(args: argparse.Namespace) -> int:
    from evojax_prune.data import embedded
    from evojax_prune.data.featureset import FeatureSet

    featureset = FeatureSet.load(args.features) if args.features else embedded.digits()
    print(featureset)
    return 0


def _not_yet(name: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        raise UsageError(f"'{name}' is not available in evojax-prune {__version__} yet")

    return command


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Multi-objective evolutionary pruning of transfer-learning heads (MO-EvoPruneDeepTL) in JAX."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    inspect = commands.add_parser("inspect", help="validate a FeatureSet file and print its summary")
    inspect.add_argument("features", nargs="?", help="FeatureSet .npz (default: the embedded digits)")
    inspect.set_defaults(handler=_inspect)

    for name, summary in (
        ("run", "run the evolutionary search"),
        ("extract", "compute a FeatureSet from images"),
        ("report", "plots and a report for a finished run"),
        ("bench", "run the benchmark suite"),
    ):
        commands.add_parser(name, help=summary).set_defaults(handler=_not_yet(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's one-line message on bad usage
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # an internal error: a bug, not the user's fault
        if os.environ.get("EVOJAX_PRUNE_DEBUG"):
            traceback.print_exc()
        print(
            f"{PROG}: internal error: {type(error).__name__}: {_one_line(error)} "
            "(set EVOJAX_PRUNE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
