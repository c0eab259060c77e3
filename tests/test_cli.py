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
         "--ood-temperature 0.0: OodConfig.temperature must be a finite number > 0, got 0.0"),
        (["--ood-temperature", "nan"],
         "--ood-temperature nan: OodConfig.temperature must be a finite number > 0"),
        (["--ood-temperature", "inf"],  # issue 33 (9): accepted
         "--ood-temperature inf: OodConfig.temperature must be a finite number > 0, got inf"),
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


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seed", "4294967296"], "--seed 4294967296: the seed must be an integer in [0, 4294967295]"),
        (["--seed", "99999999999999999999"], "--seed 99999999999999999999: the seed must be an integer in"),
        (["--seed", "-1"], "--seed -1: the seed must be an integer in [0, 4294967295]"),
        (["--seed", "4294967295", "--runs", "2"],
         "--seed 4294967295: the seeds must be an integer in [0, 4294967295] (2**32 - 1: a seed keeps 32 "
         "bits), got 4294967295 .. 4294967296 (2 runs)"),
    ],
)
def test_a_seed_outside_32_bits_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, arguments, message):
    """Issue 33 (2): --seed 4294967296 silently ran seed 0 (PRNGKey keeps 32 bits); 2**64 and above
    was an internal OverflowError after the run directory was made."""
    out = tmp_path / "run"
    assert cli.main(["run", *arguments, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def one_class_featureset(tmp_path):
    import numpy as np

    from evojax_prune.data.featureset import FeatureSet

    rng = np.random.default_rng(0)
    rows = lambda n: rng.normal(size=(n, 4)).astype(np.float32)
    labels = lambda n: np.zeros(n, np.int32)
    return FeatureSet(x_train=rows(8), y_train=labels(8), x_val=rows(4), y_val=labels(4), x_test=rows(4),
                      y_test=labels(4), ood_val=rows(4), ood_test=rows(4), class_names=("only",),
                      metadata={"name": "single"}).save(tmp_path / "single.npz")


def test_a_featureset_of_one_class_is_shown_by_inspect_with_a_warning_and_refused_by_run(tmp_path, capsys):
    """Issue 33 (4): one class ran to a front of one member, accuracy 1, AUROC 0.5, and no word."""
    path = one_class_featureset(tmp_path)
    assert cli.main(["inspect", str(path)]) == 0  # a valid file: inspect shows it, and says so
    captured = capsys.readouterr()
    assert "C=1 classes ['only']" in captured.out
    assert captured.err.strip() == (
        f"evojax-prune: warning: {path}: has 1 class; the search needs at least 2 (with one class every head "
        "is right on every sample and its softmax is 1 on any input, so no OoD score ranks anything); "
        "'evojax-prune run' refuses it")
    out = tmp_path / "run"
    assert cli.main(["run", "--features", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evojax-prune: error: {path}: has 1 class; the search needs at least 2"), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_library_errors_name_python_arguments_and_the_command_its_flags(tmp_path, capsys):
    """Issue 32: an error from Python names Python's arguments (resume=True, num_images=0); the
    command prints the same error naming its flags (cli.as_flags)."""
    from evojax_prune.analysis.explain import explain_run
    from evojax_prune.run import rundir

    with pytest.raises(ValueError, match=r"^num_images=0: must be at least 1$"):
        explain_run(tmp_path, num_images=0)
    assert cli.main(["explain", str(tmp_path), "--images", "0"]) == 2
    assert "error: --images 0: must be at least 1" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    with pytest.raises(rundir.RunDirectoryError, match=r"pass resume=True to continue .* or overwrite=True"):
        rundir.prepare(taken, resume=False, overwrite=False)
    assert cli.main(["run", "--out", str(taken), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass --resume to continue the run in it or --overwrite to replace it" in err, err
    assert cli.as_flags("write them again: resume_search('/r')") == \
        "write them again: 'evojax-prune run --out /r --resume'"
