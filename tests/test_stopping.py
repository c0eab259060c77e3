"""Stopping and warm starts: --time-budget, --hv-patience, --max-features, --initial-masks.

The base is one finished command-line run (the quick preset, population 4, two
generations, seed 0); every other run here is measured against it or its files.
"""

import io
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fronts import assert_same_front

from evojax_prune import config
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.run import rundir, search_result
from evojax_prune.search import operators, stopping, strategy, warm_start
from evojax_prune.search.controls import RunControls
from evojax_prune.search.loop import run_search

FLAGS = ["--population", "4", "--generations", "2", "--seed", "0", "--quiet"]
TINY = 1e-3  # seconds: every run crosses it in its first generation


def run_command(directory: Path, *extra: str) -> list[str]:
    return ["run", *FLAGS, "--out", str(directory), *extra]


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def config_of(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def evaluated_masks(run: Path, num_features: int = 64) -> np.ndarray:
    """(E, D) bool: every mask the search trained (the cache's keys in checkpoint.npz)."""
    with np.load(run / rundir.CHECKPOINT) as archive:
        return np.unpackbits(archive["cache_keys"], axis=1)[:, :num_features].astype(bool)


def initial_population(run: Path) -> np.ndarray:
    """(P, D) bool: the population of a run stopped after generation 0 (NSGA-II's state, first leaf)."""
    with np.load(run / rundir.CHECKPOINT) as archive:
        assert int(archive["generation"]) == 0
        return archive["state_0"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """The run every stopped or resumed run below must agree with."""
    out = tmp_path_factory.mktemp("planned") / "run"
    assert cli.main(run_command(out)) == 0
    return out


# --------------------------------------------------------------------------- time budget


def test_time_budget_stops_checkpointed_and_resume_reaches_the_planned_front(planned, tmp_path):
    run = tmp_path / "run"
    assert cli.main(run_command(run, "--time-budget", str(TINY))) == 0
    # Stopped after generation 0, the first to cross the budget; the front written as a finished run's.
    history = rundir.read_history(run)
    assert [row["generation"] for row in history] == [0]
    ended = summary_of(run)["stopping"]
    assert ended["reason"] == "time_budget" and ended["generation"] == 0 and ended["planned_generations"] == 2
    assert ended["time_budget"] == TINY and ended["elapsed_seconds"] > TINY
    assert config_of(run)["stopping"] == {"time_budget": TINY, "hv_patience": None}
    stopped, _ = search_result.read_run(run)  # a complete run directory: report and explain can read it
    assert stopped.stopping == ended and len(stopped.masks) >= 1
    # Resumed without a budget (a run control, not configuration): on to the planned generations.
    assert cli.main(run_command(run, "--resume")) == 0
    ended = summary_of(run)["stopping"]
    assert ended["reason"] == "generations" and ended["generation"] == 2 and ended["time_budget"] is None
    assert config_of(run)["stopping"] == {"time_budget": None, "hv_patience": None}
    assert_same_front(run, planned)


def test_a_resumed_run_counts_its_earlier_time(planned, tmp_path):
    """A budget the first session already spent stops a resumed run at once, after no new generation."""
    run = Path(shutil.copytree(planned, tmp_path / "run"))
    spent = rundir.read_history(run)[1]["elapsed_seconds"]
    # Back to generation 1's checkpoint and no results, as a run killed after it would be.
    for name in (rundir.CHECKPOINT, *rundir.RESULT_FILES):
        (run / name).unlink()
    assert cli.main(run_command(run, "--resume", "--time-budget", str(spent / 2))) == 0
    ended = summary_of(run)["stopping"]
    assert ended["reason"] == "time_budget" and ended["generation"] == 1
    assert len(rundir.read_history(run)) == 2


# --------------------------------------------------------------------------- hypervolume patience


def test_stalled_generations_counts_since_the_best_hypervolume():
    records = lambda *values: [{"hypervolume": value} for value in values]
    assert stopping.stalled_generations(records(0.5)) == 0
    assert stopping.stalled_generations(records(0.5, 0.6)) == 0
    assert stopping.stalled_generations(records(0.5, 0.5)) == 1  # equal is no improvement
    assert stopping.stalled_generations(records(0.6, 0.4, 0.5, 0.6)) == 3
    assert stopping.stalled_generations(records(0.6, 0.4, 0.7, 0.7)) == 1
    rule = stopping.Stopping(hv_patience=2)
    assert rule.reason(records(0.6, 0.4), 0.0) is None
    assert rule.reason(records(0.6, 0.4, 0.5), 0.0) == "hv_patience"
    both = stopping.Stopping(time_budget=1.0, hv_patience=1)
    assert both.reason(records(0.6, 0.4), 2.0) == "time_budget"


def test_hv_patience_stops_where_the_recorded_hypervolume_stalls(tmp_path):
    # The population's front: its hypervolume stalls (and falls) within 2 generations here; the
    # archive's rarely stalls so soon (tests/test_search.py checks that it never falls).
    planned, run = tmp_path / "planned", tmp_path / "run"
    assert cli.main(run_command(planned, "--front", "population")) == 0
    assert cli.main(run_command(run, "--front", "population", "--hv-patience", "1")) == 0
    full = rundir.read_history(planned)
    # Where the uninterrupted run's history says a patience of 1 stops: the first stalled generation.
    stalls = [g for g in range(1, len(full)) if stopping.stalled_generations(full[: g + 1]) >= 1]
    expected = stalls[0] if stalls else None
    assert expected is not None, "seed 0 no longer stalls within 2 generations: pick a seed that does"
    history = rundir.read_history(run)
    assert [row["hypervolume"] for row in history] == [row["hypervolume"] for row in full[: expected + 1]]
    ended = summary_of(run)["stopping"]
    assert ended["reason"] == "hv_patience" and ended["generation"] == expected and ended["hv_patience"] == 1


# --------------------------------------------------------------------------- max features


def test_repair_max_active_clears_random_ones_only_above_the_limit():
    key = jax.random.PRNGKey(0)
    masks = jax.random.uniform(key, (64, 40)) < jnp.linspace(0.0, 1.0, 64)[:, None]
    repaired = np.asarray(operators.repair_max_active(jax.random.PRNGKey(1), masks, 7))
    masks = np.asarray(masks)
    np.testing.assert_array_equal(repaired.sum(axis=1), np.minimum(masks.sum(axis=1), 7))
    assert not (repaired & ~masks).any()  # only ones cleared
    below = masks.sum(axis=1) <= 7
    np.testing.assert_array_equal(repaired[below], masks[below])
    assert len({tuple(np.flatnonzero(row)) for row in repaired[masks.sum(axis=1) == 40]}) > 1  # at random
    np.testing.assert_array_equal(np.asarray(operators.repair_max_active(key, masks, None)), masks)


def test_max_features_bounds_every_mask_evaluated_and_is_configuration(planned, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(run_command(run, "--max-features", "5")) == 0
    assert config_of(run)["config"]["search"]["max_features"] == 5
    evaluated = evaluated_masks(run)
    assert len(evaluated) == rundir.read_history(run)[-1]["evaluations"]
    assert evaluated.sum(axis=1).max() <= 5 and evaluated.sum(axis=1).min() >= 1
    result, _ = search_result.read_run(run)
    assert result.masks.sum(axis=1).max() <= 5
    assert all(row["smallest_mem"] <= 5 / 64 for row in result.history)
    assert max(summary_of(run)["front"]["active_features"]) <= 5
    assert evaluated_masks(planned).sum(axis=1).max() > 5  # without the bound the search goes above it
    # What is searched: a resume with another bound is refused, files untouched.
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    assert cli.main(run_command(run, "--resume", "--max-features", "6")) == 2
    assert "--max-features 6: the run in" in (err := capsys.readouterr().err), err
    assert "was started with search.max_features = 5" in err, err
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


# --------------------------------------------------------------------------- initial masks


def test_initial_masks_from_a_npy_and_from_an_earlier_front_seed_the_first_population(planned, tmp_path,
                                                                                     capsys):
    given = np.zeros((2, 64), np.int64)
    given[0, :10] = 1
    given[1, ::2] = 1
    np.save(tmp_path / "seeds.npy", given)
    front = search_result.read_run(planned)[0].masks[:4]
    for name, source, expected in (("npy", tmp_path / "seeds.npy", given.astype(bool)),
                                   ("pareto", planned / "pareto.npz", front)):
        run = tmp_path / name
        # Stopped after generation 0, the checkpoint's population is the initial one.
        assert cli.main(run_command(run, "--initial-masks", str(source), "--time-budget", str(TINY))) == 0
        population = initial_population(run)
        assert population.shape == (4, 64)
        np.testing.assert_array_equal(population[: len(expected)], expected)
        recorded = config_of(run)["initial_masks"]
        assert recorded == {"source": str(source), "count": len(expected),
                            "sha256": warm_start.digest(expected)}
    # The rest of the population is drawn as without seeds (run_search's init key for seed 0).
    search = config.preset("quick").replace(search={"population_size": 4}).search
    unseeded = strategy.build(search, 64).initial_population(jax.random.split(jax.random.PRNGKey(0), 3)[1])
    np.testing.assert_array_equal(initial_population(tmp_path / "npy")[2:], np.asarray(unseeded)[2:])
    # A resume with other seeds is refused; with none it continues from the checkpoint.
    assert cli.main(run_command(tmp_path / "npy", "--resume", "--initial-masks", str(planned))) == 2
    assert "different initial masks" in capsys.readouterr().err


def test_an_evosax_algorithm_is_seeded_too_and_refuses_max_features():
    from evosax.algorithms import SimpleGA

    simple_ga = SimpleGA(population_size=4, solution=jnp.zeros(64))
    seeds = np.eye(64, dtype=bool)[:2]
    evolver = strategy.build(config.SearchConfig(population_size=4), 64, simple_ga)
    genomes = np.asarray(evolver.initial_population(jax.random.PRNGKey(0), seeds))
    np.testing.assert_array_equal(evolver.masks(genomes)[:2], seeds)
    with pytest.raises(ValueError, match="max_features applies to NSGA-II's masks"):
        strategy.build(config.SearchConfig(population_size=4, max_features=8), 64, simple_ga)


def test_more_initial_masks_than_the_population_seed_the_first_p(tmp_path):
    digits = embedded.digits()
    # The command line's configuration (FLAGS), so that its compiled programs serve here too.
    cfg = config.preset("quick").replace(search={"population_size": 4, "generations": 2})
    masks = np.eye(64, dtype=bool)[:6]
    with pytest.warns(RuntimeWarning, match="6 masks for a population of 4; the first 4"):
        result = run_search(digits, cfg, seed=0, initial_masks=masks, controls=RunControls(time_budget=TINY))
    assert result.stopping["reason"] == "time_budget" and result.evaluations == 4


# --------------------------------------------------------------------------- bad input


def bad_files(directory: Path) -> None:
    np.save(directory / "narrow.npy", np.ones((3, 63), bool))
    np.save(directory / "halves.npy", np.full((2, 64), 0.5))
    np.save(directory / "flat.npy", np.ones(64, bool))
    np.savez(directory / "nomasks.npz", weights=np.ones(3))
    (directory / "garbage.npy").write_bytes(b"not numpy at all")
    (directory / "masks.csv").write_text("0,1,0,1\n1,1,0,0\n")
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 64), bool))
    (directory / "truncated.npy").write_bytes(buffer.getvalue()[:100])  # numpy's header, cut


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--time-budget", "0"], "--time-budget 0.0: time budget must be a number of seconds > 0, got 0.0"),
        (["--time-budget", "-5"],
         "--time-budget -5.0: time budget must be a number of seconds > 0, got -5.0"),
        (["--time-budget", "nan"], "--time-budget nan: time budget must be a number of seconds > 0, got nan"),
        (["--time-budget", "soon"], "argument --time-budget: invalid float value: 'soon'"),
        (["--hv-patience", "0"], "--hv-patience 0: hv patience must be an integer >= 1 (generations), got 0"),
        (["--max-features", "0"],
         "--max-features 0: SearchConfig.max_features must be an integer >= 1, got 0"),
        (["--max-features", "65"],
         "--max-features 65: search.max_features = 65 exceeds the chromosome's 64 bits (it must lie in "
         "[min_active = 1, 64])"),
        (["--initial-masks", "missing.npy"], "missing.npy: no such file"),
        (["--initial-masks", "narrow.npy"], "narrow.npy: masks are bool (3, 63), expected (K, 64)"),
        (["--initial-masks", "flat.npy"], "flat.npy: masks are bool (64,), expected (K, 64)"),
        (["--initial-masks", "halves.npy"], "halves.npy: masks must hold only 0 and 1, found [0.5]"),
        (["--initial-masks", "nomasks.npz"], "nomasks.npz: an .npz archive without a 'masks' array"),
        (["--initial-masks", "garbage.npy"], "garbage.npy: not a .npy or .npz file (it starts with 'not nu'"),
        (["--initial-masks", "masks.csv"], "masks.csv: not a .npy or .npz file (it starts with '0,1,0,'"),
        (["--initial-masks", "truncated.npy"], "truncated.npy: not a readable .npy or .npz file"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, arguments, message):
    bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    try:
        code = cli.main(run_command(tmp_path / "run", *arguments))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # no run directory


def test_initial_masks_from_a_csv_are_refused_as_not_numpy_not_as_pickled_data(tmp_path):
    """Issue 33 (9): a CSV was refused as "pickled (object) data", which it is not."""
    bad_files(tmp_path)
    with pytest.raises(warm_start.InitialMasksError) as refused:
        warm_start.read_initial_masks(tmp_path / "masks.csv", 64)
    message = str(refused.value)
    assert "masks.csv: not a .npy or .npz file" in message and "numpy.save" in message, message
    assert "pickle" not in message, message


def test_bad_controls_from_python_are_refused_before_anything_is_written(tmp_path):
    digits = embedded.digits()
    cfg = config.preset("quick")
    for kwargs, message in (({"time_budget": 0}, "time budget must be a number of seconds > 0"),
                            ({"hv_patience": 0}, "hv patience must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            RunControls(**kwargs)
    with pytest.raises(TypeError, match="controls must be a RunControls, got dict"):
        run_search(digits, cfg, out_dir=tmp_path / "run", controls={"time_budget": 1.0})
    with pytest.raises(ValueError, match=r"expected \(K, 64\)"):
        run_search(digits, cfg, out_dir=tmp_path / "run", initial_masks=np.ones((2, 5)))
    with pytest.raises(ValueError, match="max_features = 65 exceeds the chromosome's 64 bits"):
        run_search(digits, cfg.replace(search={"max_features": 65}), out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="max_features = 2 is below min_active = 3"):
        config.SearchConfig(min_active=3, max_features=2)
    with pytest.raises(ValueError, match="max_features must be an integer >= 1"):
        config.SearchConfig(min_active=0, max_features=0)
    bounded = cfg.replace(search={"max_features": 9})
    assert config.RunConfig.from_json(bounded.to_json()) == bounded
    # config.json of a run from before the field: no limit.
    older = json.loads(cfg.to_json())
    del older["search"]["max_features"]
    assert config.RunConfig.from_dict(older).search.max_features is None
