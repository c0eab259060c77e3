import subprocess
import sys

from evojax_prune import __version__
from evojax_prune.cli import main as cli


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "evojax_prune.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "extract", "report", "explain", "inspect"):
        assert command in result.stdout


def test_usage_errors_exit_2_with_one_line():
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice" in result.stderr


def test_inspect_embedded_prints_the_summary(capsys):
    assert cli.main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert "train=1077" in out and "D=64" in out and "C=10" in out and "OoD val=360" in out


def test_inspect_missing_file_is_an_input_error(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert "missing.npz" in err and "no such file" in err
    assert len(err.strip().splitlines()) == 1


def test_internal_errors_exit_1(capsys):
    def broken(args):
        raise RuntimeError("boom")

    args = cli.build_parser().parse_args(["inspect"])
    args.handler = broken
    assert cli.dispatch(args) == 1
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err
