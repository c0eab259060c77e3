import csv
import json
import subprocess
import sys

import pytest

from evojax_prune.cli import main as cli
from evojax_prune.config import OOD_SCORES
from evojax_prune.version import __version__


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


@pytest.mark.parametrize("score", OOD_SCORES)
def test_the_embedded_run_trains_and_scores_with_every_ood_score(tmp_path, score):
    """`evojax-prune run --ood-score S` on the digits, the quick preset, as small as the CLI allows."""
    out = tmp_path / "run"
    argv = ["run", "--population", "2", "--generations", "1", "--ood-score", score, "--out", str(out),
            "--quiet"]
    if score == "energy":
        argv += ["--ood-temperature", "2"]
    assert cli.main(argv) == 0
    recorded = json.loads((out / "config.json").read_text())["config"]["ood"]
    assert recorded["score"] == score
    assert recorded["energy_temperature"] == (2.0 if score == "energy" else 1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ood_score"] == score
    aurocs = summary["front"]["validation"]["auroc"] + [summary["baseline"]["validation"]["auroc"]]
    # The digits against their OoD data are separable by every score.
    assert all(0.0 <= value <= 1.0 for value in aurocs) and max(aurocs) > 0.6
    with open(out / "pareto.csv") as stream:
        assert {row["ood_score"] for row in csv.DictReader(stream)} == {score}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--ood-score", "gram"], "argument --ood-score: invalid choice: 'gram'"),
        (["--ood-temperature", "0"],
         "--ood-temperature 0.0: OodConfig.temperature must be a number > 0, got 0.0"),
        (["--ood-temperature", "nan"], "--ood-temperature nan: OodConfig.temperature must be a number > 0"),
        (["--ood-score", "msp", "--ood-temperature", "2"], "the 'msp' score has no temperature"),
    ],
)
def test_bad_ood_score_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, arguments, message):
    out = tmp_path / "run"
    try:
        status = cli.main(["run", *arguments, "--out", str(out), "--quiet"])
    except SystemExit as exit:  # argparse's own usage errors
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
