"""run_searches(runs=R): R searches in lockstep, each exactly as alone, and the front merged over them."""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fronts import assert_same_result
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from evojax_prune.cli import main as cli
from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.run import search_result
from evojax_prune.search.controls import RunControls
from evojax_prune.search.loop import run_search, run_searches

RUNS, SEED = 2, 5
CONFIG = preset("quick").replace(search={"population_size": 4, "generations": 2}, train={"max_epochs": 5})
TIMINGS = ("train_seconds", "score_seconds", "select_seconds", "elapsed_seconds", "train_calls")


@pytest.fixture(scope="module")
def features():
    return embedded.digits()


@pytest.fixture(scope="module")
def together(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "group"
    return run_searches(features, CONFIG, seed=SEED, runs=RUNS, out_dir=out), out


def test_each_run_equals_its_seed_alone(features, together):
    result, out = together
    assert [run.seed for run in result.runs] == [SEED + index for index in range(RUNS)]
    for index in range(RUNS):
        alone = run_search(features, CONFIG, seed=SEED + index)
        assert_same_result(result.runs[index], alone)
        strip = lambda history: [{k: v for k, v in record.items() if k not in TIMINGS} for record in history]
        assert strip(result.runs[index].history) == strip(alone.history)
        on_disk, _ = search_result.read_run(out / f"run-{index}")  # an ordinary, complete run directory
        assert_same_result(on_disk, alone)


def test_a_group_loads_back_with_its_merged_front(together, tmp_path):
    import shutil

    from evojax_prune.search.lockstep import RunsResult

    result, out = together
    loaded = RunsResult.load(out)
    np.testing.assert_array_equal(loaded.merged_run, result.merged_run)
    np.testing.assert_array_equal(loaded.merged_member, result.merged_member)
    np.testing.assert_array_equal(loaded.masks, result.masks)
    assert loaded.hypervolume == result.hypervolume
    np.testing.assert_array_equal(loaded.run_hypervolumes, result.run_hypervolumes)
    # A member replaced by another run's directory: refused by name.
    copy = tmp_path / "group"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "run-1")
    shutil.copytree(out / "run-0", copy / "run-1")
    with pytest.raises(ValueError, match=r"runs\.json: its merged front is not the one"):
        RunsResult.load(copy)
    with pytest.raises(ValueError, match="not a group of runs"):
        RunsResult.load(out / "run-0")


def test_every_generation_trains_all_runs_in_one_call(together):
    result, _ = together
    for generation in range(1, CONFIG.search.generations + 1):
        calls = [run.history[generation]["train_calls"] for run in result.runs]
        assert all(call == calls[0] for call in calls) and len(calls[0]) == 1  # one shared call
        trained = sum(run.history[generation]["trained"] - run.history[generation - 1]["trained"]
                      for run in result.runs)
        assert calls[0][0][1] == trained  # it trained every run's new masks


def test_merged_front_against_pymoo(together):
    result, out = together
    objectives = np.concatenate([run.objectives for run in result.runs])
    owner = [(r, m) for r, run in enumerate(result.runs) for m in range(len(run.masks))]
    front = NonDominatedSorting().do(objectives, only_non_dominated_front=True)
    assert sorted(zip(result.merged_run.tolist(), result.merged_member.tolist(), strict=True)) == \
        sorted(owner[i] for i in front)
    assert result.hypervolume == pytest.approx(HV(ref_point=np.ones(3))(objectives[front]), rel=1e-9)
    assert result.hypervolume >= max(result.run_hypervolumes) - 1e-12
    accuracy = result.metrics("validation")["accuracy"]
    assert np.all(np.diff(accuracy) <= 0)  # best first
    summary = json.loads((out / "runs.json").read_text())
    assert summary["merged"]["hypervolume"] == pytest.approx(result.hypervolume)
    assert summary["run_hypervolumes"]["mean"] == pytest.approx(np.mean(result.run_hypervolumes))
    assert [run["seed"] for run in summary["runs"]] == [SEED + index for index in range(RUNS)]
    with open(out / "merged_pareto.csv") as stream:
        rows = list(csv.DictReader(stream))
    with open(out / "run-0" / "pareto.csv") as stream:
        assert list(rows[0]) == ["run", *csv.DictReader(stream).fieldnames]  # every pareto.csv column
    assert len(rows) == len(result.merged_run)
    for row, run, member in zip(rows, result.merged_run, result.merged_member, strict=True):
        assert (int(row["run"]), int(row["member"])) == (run, member)
        assert int(row["active_features"]) == result.runs[run].masks[member].sum()
        assert int(row["epochs"]) == result.runs[run].validation["epochs"][member]
        assert row["ood_score"] == CONFIG.ood.score


def test_stopped_runs_resume_to_the_same_fronts(features, together, tmp_path):
    result, _ = together
    out = tmp_path / "group"
    stopped = run_searches(features, CONFIG, seed=SEED, runs=RUNS, out_dir=out,
                           controls=RunControls(time_budget=1e-3))
    assert all(run.stopping["reason"] == "time_budget" for run in stopped.runs)
    resumed = run_searches(features, CONFIG, seed=SEED, runs=RUNS, out_dir=out, resume=True)
    for got, expected in zip(resumed.runs, result.runs, strict=True):
        assert_same_result(got, expected)
    assert resumed.hypervolume == result.hypervolume


def _cli(*arguments, cwd):
    """``evojax-prune run ARGUMENTS`` in this process (its compiled programs reused): (status, stderr)."""
    with contextlib.chdir(cwd), contextlib.redirect_stderr(io.StringIO()) as stderr:
        status = cli.main(["run", *arguments, "--quiet"])
    return status, stderr.getvalue()


def test_bad_runs_are_refused_before_anything_is_written(tmp_path, together):
    _, out = together
    done = _cli("--runs", "0", "--out", "fresh", cwd=tmp_path)
    assert done[0] == 2 and "--runs 0: runs must be an integer >= 1, got 0" in done[1]
    assert not (tmp_path / "fresh").exists()
    before = sorted(path.name for path in out.iterdir())
    done = _cli("--runs", "2", "--out", str(out), cwd=tmp_path)
    assert done[0] == 2 and "directory exists and is not empty" in done[1]
    # --resume takes the group's settings: a flag that disagrees names both values (issue 33, 3).
    done = _cli("--runs", "3", "--resume", "--out", str(out), cwd=tmp_path)
    assert done[0] == 2 and f"--runs 3: the run in {out} was started with runs 2;" in done[1]
    (out / "run-7").mkdir()
    done = _cli("--runs", "2", "--resume", "--out", str(out), cwd=tmp_path)
    assert done[0] == 2 and "['run-0', 'run-1', 'run-7'] are not a group's run-0 .. run-2" in done[1]
    (out / "run-7").rmdir()
    (tmp_path / "half" / "run-0").mkdir(parents=True)
    done = _cli("--runs", "2", "--resume", "--out", "half", cwd=tmp_path)
    assert done[0] == 2 and "run-0: nothing to resume" in done[1]
    assert sorted(path.name for path in out.iterdir()) == before


def test_runs_in_lockstep_fit_the_mahalanobis_score_as_each_run_alone(features):
    """The shared scoring call gets the training split too (evaluator.train_and_score_together)."""
    config = preset("quick").replace(head={"hidden": 16}, search={"population_size": 2, "generations": 1},
                                     train={"max_epochs": 3}, ood={"score": "mahalanobis"})
    result = run_searches(features, config, seed=SEED, runs=2)
    for index in range(2):
        assert_same_result(result.runs[index], run_search(features, config, seed=SEED + index))


def test_report_of_a_group_shows_the_merged_front_the_spread_and_each_run(together, tmp_path, capsys):
    """Issue 32: `evojax-prune report GROUP_DIR`."""
    import shutil

    result, out = together
    group = Path(shutil.copytree(out, tmp_path / "group"))
    assert cli.main(["report", str(group)]) == 0, capsys.readouterr().err
    for name in ("front_pairs", "front_3d", "run_hypervolumes"):
        assert (group / "figures" / f"{name}.png").stat().st_size > 0, name
    text = (group / "report.md").read_text()
    recorded = json.loads((group / "runs.json").read_text())
    assert f"Merged front: **{len(result.merged_run)} members**" in text
    assert f"hypervolume **{recorded['merged']['hypervolume']:.4f}**" in text
    assert f"mean **{recorded['run_hypervolumes']['mean']:.4f}**" in text
    for index, run in enumerate(recorded["runs"]):
        assert f"| {index} | {run['seed']} | {run['front_size']} | {run['hypervolume']:.4f} |" in text
    # A group with its report still resumes (its files are a group's), and a run's report is refused
    # the options of one run.
    assert cli.main(["run", "--out", str(group), "--resume", "--quiet"]) == 0
    assert cli.main(["report", str(group), "--compare-published", "rps"]) == 2
    assert "a group of runs" in capsys.readouterr().err
