"""``evojax-prune bench``: runs ``benchmarks/run_all.py`` from a clone of the repository."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _find_runner() -> Path:
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        runner = root / "benchmarks" / "run_all.py"
        if runner.is_file():
            return runner
    raise FileNotFoundError(
        "benchmarks/run_all.py not found: run 'evojax-prune bench' from a clone of the repository"
    )


def _bench(args: argparse.Namespace) -> int:
    runner = _find_runner()
    command = [sys.executable, str(runner), "--size", args.size]
    if args.out_dir:
        command += ["--out-dir", args.out_dir]
    if args.render_only:
        command.append("--render-only")
    return subprocess.run(command).returncode


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", choices=["cpu", "gpu", "smoke"], default="cpu", help="sizes (smoke: a quick check)"
    )
    parser.add_argument("--out-dir", help="where the JSON results go (default benchmarks/results)")
    parser.add_argument("--render-only", action="store_true", help="only rebuild the Markdown tables")
    parser.set_defaults(handler=_bench)
