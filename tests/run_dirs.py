"""Helpers of the tests that damage, copy and resume run directories (test_faults, test_reliability)."""

import hashlib
import shutil
from pathlib import Path

from evojax_prune.cli import main as cli

# The common base: one finished command-line run (quick preset, population 4, 3 generations, seed 0).
FLAGS = ["--population", "4", "--generations", "3", "--seed", "0", "--quiet"]


def run_command(directory: Path, *extra: str) -> list[str]:
    return ["run", *FLAGS, "--out", str(directory), *extra]


def copy_of(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file's bytes under ``directory``, by path: which files, holding what."""
    return {path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def one_line_error(capsys, argv: list[str]) -> str:
    """Runs the command; asserts exit 2 with one line on stderr, and returns it."""
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("evojax-prune: error: "), err
    return err
