"""Runs you can trust (issue 33; docs/reliability.md): every file of a run is that run's own
(its fingerprint), a refused command changes no byte, a finished run resumed writes nothing, and
a run resumes from its directory alone, from the command line or from Python.

Each case first failed on the main of 2026-12-07 (3627282 and after): a copied checkpoint or
config.json was accepted, ``run --out DIR --resume`` refused most runs, a finished run resumed
rewrote summary.json, a full disk left pareto.csv written.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from fronts import assert_same_front
from run_dirs import FLAGS, copy_of, digests, one_line_error, run_command

from evojax_prune import RunControls, SearchResult, resume_search, run_search
from evojax_prune.cli import main as cli
from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.run import fingerprint, rundir

TINY_BUDGET = 1e-9  # stops a run after generation 0


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    """The base run's command with another seed: a run whose files must never be taken for base's."""
    out = tmp_path_factory.mktemp("other") / "run"
    assert cli.main(run_command(out, "--seed", "1")) == 0
    return out


def with_file_of(run: Path, other: Path, name: str) -> dict[str, str]:
    """``run`` with ``name`` copied over from ``other``; the digests of every file after."""
    (run / name).write_bytes((other / name).read_bytes())
    return digests(run)


# --------------------------------------------------------------------------- files of another run (1, 8)


@pytest.mark.parametrize("name", [rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT, "history.jsonl"])
def test_a_file_of_another_run_is_refused_by_resume_naming_it(base, other, tmp_path, capsys, name):
    run = copy_of(base, tmp_path)
    before = with_file_of(run, other, name)
    err = one_line_error(capsys, run_command(run, "--resume"))
    assert f"{run / name}: belongs to another run (" in err, err
    if name != "history.jsonl":  # a history line carries the id only
        assert "seed 1, " in err and " 0)" in err, err
    assert digests(run) == before
    with pytest.raises(rundir.ForeignFileError, match=f"{name}: belongs to another run"):
        resume_search(run)
    assert digests(run) == before


def test_a_config_json_of_another_run_is_named_as_the_odd_one_out(base, other, tmp_path, capsys):
    """config.json copied over: resume (which takes the run's settings from it) and report name
    config.json, not the files that were always there; SearchResult.load refuses it too."""
    run = copy_of(base, tmp_path)
    before = with_file_of(run, other, "config.json")
    err = one_line_error(capsys, ["run", "--out", str(run), "--resume", "--quiet"])
    assert f"{run / 'config.json'}: belongs to another run (seed 1, " in err, err
    assert "checkpoint.npz" in err and "history.jsonl" in err, err
    err = one_line_error(capsys, ["report", str(run)])
    assert f"{run / 'config.json'}: belongs to another run (seed 1, " in err, err
    with pytest.raises(rundir.ForeignFileError, match=r"config\.json: belongs to another run"):
        SearchResult.load(run)
    assert digests(run) == before


@pytest.mark.parametrize("name", ["summary.json", "pareto.npz"])
def test_results_of_another_run_are_refused_by_report_and_load(base, other, tmp_path, capsys, name):
    run = copy_of(base, tmp_path)
    before = with_file_of(run, other, name)
    err = one_line_error(capsys, ["report", str(run)])
    assert f"{run / name}: belongs to another run (seed 1, " in err, err
    with pytest.raises(rundir.ForeignFileError):
        SearchResult.load(run)
    assert digests(run) == before


def test_every_file_carries_the_runs_fingerprint(base):
    recorded = json.loads((base / "config.json").read_text())
    mark = recorded["fingerprint"]
    assert mark["seed"] == 0 and mark["format"] == rundir.FORMAT and mark["strategy"] == "nsga2"
    assert mark["features"] == embedded.digits().digest[:16]
    assert json.loads((base / "summary.json").read_text())["fingerprint"] == mark
    for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT, "pareto.npz"):
        with np.load(base / name) as archive:
            assert fingerprint.from_array(archive["fingerprint"]) == mark, name
    lines = [json.loads(line) for line in (base / "history.jsonl").read_text().splitlines()]
    assert {line["run_id"] for line in lines} == {mark["id"]}


def test_a_run_from_before_fingerprints_still_reads_and_resumes(base, tmp_path, capsys):
    """Files written before fingerprints carry none: read, reported and resumed as before."""
    run = copy_of(base, tmp_path)
    for name in ("config.json", "summary.json"):
        data = json.loads((run / name).read_text())
        data.pop("fingerprint")
        (run / name).write_text(json.dumps(data))
    history = run / "history.jsonl"
    history.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "run_id"}) + "\n"
                               for line in history.read_text().splitlines()))
    for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT, "pareto.npz"):
        with np.load(run / name) as archive:
            arrays = {key: archive[key] for key in archive.files if key != "fingerprint"}
        np.savez(run / name, **arrays)
    assert_same_front(run, base)
    (run / rundir.CHECKPOINT).unlink()  # back one generation: the resume has work to do
    for name in rundir.RESULT_FILES:
        (run / name).unlink()
    assert cli.main(run_command(run, "--resume")) == 0, capsys.readouterr().err
    assert_same_front(run, base)


# --------------------------------------------------------------------------- resume as the README says (3)


def test_a_python_run_resumes_from_the_command_line(tmp_path, capsys):
    """A configuration no flag can give (the learning rate), stopped after generation 0 from
    Python, resumed by 'run --out DIR --resume' alone: the front of the uninterrupted run."""
    config = preset("quick").replace(search={"population_size": 4, "generations": 2},
                                     train={"learning_rate": 0.02})
    digits = embedded.digits()
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    run_search(digits, config, seed=4, out_dir=uninterrupted)
    run_search(digits, config, seed=4, out_dir=stopped, controls=RunControls(time_budget=TINY_BUDGET))
    assert len(rundir.read_history(stopped)) == 1
    assert cli.main(["run", "--out", str(stopped), "--resume", "--quiet"]) == 0, capsys.readouterr().err
    assert_same_front(stopped, uninterrupted)


def test_a_command_line_run_resumes_from_python(base, tmp_path):
    stopped = tmp_path / "stopped"
    assert cli.main(run_command(stopped, "--time-budget", str(TINY_BUDGET))) == 0
    assert len(rundir.read_history(stopped)) == 1
    result = resume_search(stopped)
    assert len(result.history) == 4
    assert_same_front(stopped, base)


def test_a_flag_that_disagrees_with_the_run_is_refused_naming_both_values(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    before = digests(run)
    for flags, expected in ((["--seed", "2"], "--seed 2: the run in"),
                            (["--generations", "5"], "search.generations = 3"),
                            (["--ood-score", "msp"], "ood {'score': 'odin'}"),
                            (["--preset", "default"], "preset quick")):
        err = one_line_error(capsys, ["run", "--out", str(run), "--resume", *flags])
        assert expected in err and "drop the flag, or start a new run" in err, err
    assert digests(run) == before
    # Flags that agree are accepted: the README's form with the run's own flags.
    assert cli.main(["run", *FLAGS, "--out", str(run), "--resume"]) == 0


# --------------------------------------------------------------------------- finished runs (6)


def test_a_finished_run_resumed_says_so_and_writes_nothing(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    before = digests(run)
    assert cli.main(["run", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "the run is finished (generation 3 of 3" in err, err
    assert digests(run) == before
    with pytest.warns(UserWarning, match="the run is finished"):
        result = resume_search(run, controls=RunControls(time_budget=10.0))
    assert digests(run) == before
    assert result.wall_time == SearchResult.load(run).wall_time  # the run as written, no time added


def test_a_finished_group_resumed_and_a_refused_one_change_no_byte(tmp_path, capsys):
    group = tmp_path / "group"
    assert cli.main(run_command(group, "--runs", "2", "--generations", "1")) == 0
    before = digests(group)
    assert cli.main(["run", "--out", str(group), "--resume", "--quiet"]) == 0
    assert capsys.readouterr().err.count("the run is finished") == 2
    assert digests(group) == before
    for name in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):  # run-1 cannot be resumed
        (group / "run-1" / name).write_bytes(b"")
    before = digests(group)
    err = one_line_error(capsys, ["run", "--out", str(group), "--resume", "--quiet"])
    assert "run-1" in err and "checkpoint.npz: empty" in err, err
    assert digests(group) == before  # run-0, finished, was not rewritten either


# --------------------------------------------------------------------------- damage one can live with (8)


def test_a_damaged_previous_checkpoint_is_reported(base, tmp_path, capsys):
    run = copy_of(base, tmp_path)
    previous = run / rundir.PREVIOUS_CHECKPOINT
    previous.write_bytes(previous.read_bytes()[:500])
    assert cli.main(["run", "--out", str(run), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {previous}: not a readable .npz archive" in err, err
    assert "the newest checkpoint is whole and used" in err, err


def test_a_damaged_history_tail_costs_the_report_its_tail_and_resume_says_how_to_mend_it(base, tmp_path,
                                                                                          capsys):
    run = copy_of(base, tmp_path)
    history = run / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    before = digests(run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = SearchResult.load(run)  # what report reads
    assert len(loaded.history) == 3 and len(loaded.masks) >= 1
    assert any("read generations 0 .. 2 only" in str(warning.message) for warning in caught)
    err = one_line_error(capsys, ["run", "--out", str(run), "--resume", "--quiet"])
    assert f"{history}: line 4 is not valid JSON" in err, err
    assert "restore history.jsonl from a copy of the run" in err, err
    assert digests(run) == before


# --------------------------------------------------------------------------- a full disk (7)


def test_a_full_disk_while_writing_the_results_changes_none_of_them(base, tmp_path, capsys, monkeypatch):
    """summary.json cannot be written: pareto.csv and pareto.npz are not left written beside it."""
    real_fsync = os.fsync

    def fsync(descriptor):
        if "summary.json" in os.readlink(f"/proc/self/fd/{descriptor}"):
            raise OSError(28, "No space left on device")
        return real_fsync(descriptor)

    run = copy_of(base, tmp_path)
    for name in rundir.RESULT_FILES:  # a run killed after its last checkpoint: results to write
        (run / name).unlink()
    monkeypatch.setattr(os, "fsync", fsync)
    err = one_line_error(capsys, run_command(run, "--resume"))
    assert ("summary.json: cannot be written (No space left on device); none of pareto.csv, pareto.npz, "
            "summary.json was changed") in err, err
    assert not [name for name in rundir.RESULT_FILES if (run / name).exists()]
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert cli.main(run_command(run, "--resume")) == 0
    assert_same_front(run, base)


# --------------------------------------------------------------------------- the contract's table


def test_every_test_the_reliability_contract_names_exists():
    """docs/reliability.md cites its checks as ``file::test``: each must be a test of that file."""
    import re

    root = Path(__file__).parents[1]
    text = (root / "docs" / "reliability.md").read_text()
    cited, module = [], None
    for match in re.finditer(r"`(test_\w+)::(test_\w+)`|`::(test_\w+)`", text):
        module = match.group(1) or module  # "`::name`" continues the module cited before it
        cited.append((module, match.group(2) or match.group(3)))
    assert len(cited) >= 20
    for module, name in cited:
        source = (root / "tests" / f"{module}.py").read_text()
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{module}::{name}"
