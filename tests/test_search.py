"""The search end to end, on the embedded digits with a tiny configuration."""

import csv
import json
import re
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from evojax_prune import config
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.search.loop import run_search


def tiny_config(generations=3):
    return config.preset("quick").replace(
        head={"hidden": 16},
        train={"max_epochs": 6, "patience": 3},
        search={"population_size": 8, "generations": generations},
    )


@pytest.fixture(scope="module")
def digits():
    return embedded.digits()


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    return run_search(digits, tiny_config(), seed=3, out_dir=out), out


def test_same_seed_same_front(digits, finished):
    first, _ = finished
    again = run_search(digits, tiny_config(), seed=3)
    np.testing.assert_array_equal(first.masks, again.masks)
    for name in first.validation:
        np.testing.assert_array_equal(first.validation[name], again.validation[name])
        np.testing.assert_array_equal(first.test[name], again.test[name])


def test_front_is_non_dominated_and_masks_are_distinct(finished):
    result, _ = finished
    objectives = result.objectives
    for i in range(len(objectives)):
        dominated = np.all(objectives <= objectives[i], axis=1) & np.any(objectives < objectives[i], axis=1)
        assert not dominated.any()
    assert len(np.unique(result.masks, axis=0)) == len(result.masks)
    np.testing.assert_allclose(result.validation["mem"], result.masks.mean(axis=1))


def test_no_mask_is_trained_twice(finished):
    result, _ = finished
    last = result.history[-1]
    assert last["trained"] == last["evaluations"] == result.evaluations
    assert result.evaluations <= result.config.search.max_evaluations


def test_outputs_parse_and_agree(finished):
    result, out = finished
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["config.json", "history.jsonl", "checkpoint.npz", "checkpoint.previous.npz", "pareto.csv",
         "pareto.npz", "summary.json"]
    )
    recorded = json.loads((out / "config.json").read_text())
    assert config.RunConfig.from_dict(recorded["config"]) == result.config
    assert recorded["seed"] == 3 and recorded["environment"]["packages"]["jax"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["generation"] for row in history] == list(range(4))
    # Every line carries the run's fingerprint id (run/fingerprint.py), dropped when read back.
    assert {row.pop("run_id") for row in history} == {recorded["fingerprint"]["id"]}
    assert history == result.history
    for row in history:
        assert {"train_seconds", "score_seconds", "select_seconds", "hypervolume"} <= set(row)
    with open(out / "pareto.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(result.masks)
    np.testing.assert_allclose([float(r["test_accuracy"]) for r in rows], result.test["accuracy"], atol=1e-6)
    np.testing.assert_array_equal([int(r["active_features"]) for r in rows], result.masks.sum(axis=1))
    with np.load(out / "pareto.npz") as archive:
        np.testing.assert_array_equal(archive["masks"], result.masks)
        np.testing.assert_array_equal(archive["hidden_kernel"], result.params.hidden_kernel)
        assert archive["baseline_hidden_kernel"].shape == result.params.hidden_kernel.shape[1:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["front"]["size"] == len(result.masks)
    assert summary["hypervolume"] == pytest.approx(result.hypervolume)
    assert summary["hypervolume"] == pytest.approx(history[-1]["hypervolume"])
    assert summary["baseline"]["test"]["accuracy"] == pytest.approx(result.baseline_test["accuracy"])


def test_front_scores_reproduce_from_saved_weights(digits, finished):
    """The saved heads, applied to the test split, give the reported test accuracy."""
    from evojax_prune import head

    result, _ = finished
    logits = head.apply_population(result.params, result.masks, digits.x_test)
    accuracy = (np.asarray(logits).argmax(-1) == digits.y_test).mean(axis=1)
    np.testing.assert_allclose(accuracy, result.test["accuracy"], atol=1e-6)
    # The validation figures of the retrained front equal those the search cached.
    assert np.all(result.validation["accuracy"] >= 0) and result.baseline_test["mem"] == 1.0


def test_resume_after_sigkill_equals_an_uninterrupted_run(digits, finished, tmp_path):
    uninterrupted, _ = finished
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from evojax_prune import config
        from evojax_prune.data import embedded
        from evojax_prune.search.controls import RunControls
        from evojax_prune.search.loop import run_search
        cfg = config.preset("quick").replace(head={{"hidden": 16}}, train={{"max_epochs": 6, "patience": 3}},
                                             search={{"population_size": 8, "generations": 3}})
        def die(record):
            if record["generation"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_search(embedded.digits(), cfg, seed=3, out_dir={str(out)!r},
                   controls=RunControls(on_generation=die))
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    resumed = run_search(digits, tiny_config(), seed=3, out_dir=out, resume=True)
    np.testing.assert_array_equal(resumed.masks, uninterrupted.masks)
    for name in uninterrupted.validation:
        np.testing.assert_array_equal(resumed.validation[name], uninterrupted.validation[name])
    assert [row["generation"] for row in resumed.history] == [0, 1, 2, 3]
    assert resumed.evaluations == uninterrupted.evaluations


def test_resume_refuses_a_different_configuration(digits, finished):
    _, out = finished
    with pytest.raises(ValueError, match=r"different config \(config\.head\.hidden: the run's \d+, this "
                                         r"call's 8; resume_search\("):
        run_search(digits, tiny_config(generations=5).replace(head={"hidden": 8}), seed=3, out_dir=out,
                   resume=True)


def test_existing_run_directory_is_refused_unless_asked(digits, finished, capsys):
    _, out = finished
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    with pytest.raises(ValueError, match=r"resume=True.*overwrite=True"):  # Python's arguments, not flags
        run_search(digits, tiny_config(), seed=3, out_dir=out)
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before


@pytest.mark.parametrize("seed", [2**32, 2**32 + 3, 10**20, -1, 1.5, True])
def test_a_seed_outside_32_bits_is_refused_naming_seed(digits, tmp_path, seed):
    """Issue 33 (2): PRNGKey keeps 32 bits, so 2**32 ran seed 0's search; 2**64 and above raised an
    OverflowError after the run directory was made."""
    from evojax_prune.search.loop import MAX_SEED, check_seed, run_searches

    assert MAX_SEED == 2**32 - 1
    message = re.escape(f"seed must be an integer in [0, {MAX_SEED}]") + ".*got " + re.escape(repr(seed))
    with pytest.raises(ValueError, match=message):
        run_search(digits, tiny_config(), seed=seed, out_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        run_searches(digits, tiny_config(), runs=2, seed=seed, out_dir=tmp_path / "runs")
    # The seeds of a group, seed .. seed + runs - 1, all fit.
    with pytest.raises(ValueError, match=re.escape(f"got {MAX_SEED} .. {MAX_SEED + 1} (2 runs)")):
        run_searches(digits, tiny_config(), runs=2, seed=MAX_SEED, out_dir=tmp_path / "runs")
    check_seed(MAX_SEED - 1, 2), check_seed(MAX_SEED), check_seed(0)
    assert list(tmp_path.iterdir()) == []


def test_paper_preset_runs_end_to_end_on_small_synthetic_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 40)) * 2

    def split(n):
        y = np.arange(n, dtype=np.int32) % 3
        return (centres[y] + rng.normal(size=(n, 40))).astype(np.float32), y

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(60), split(30), split(30)
    features = FeatureSet(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        ood_val=rng.normal(size=(30, 40)).astype(np.float32),
        ood_test=rng.normal(size=(30, 40)).astype(np.float32),
        class_names=("a", "b", "c"), metadata={"name": "synthetic"},
    )
    paper = config.preset("paper").replace(train={"max_epochs": 4}, head={"hidden": 32},
                                            search={"generations": 5})
    result = run_search(features, paper, seed=0)
    assert paper.search.num_offspring == 2 and len(result.history) == 6
    assert result.evaluations <= 30 + 5 * 2
    assert 0.0 <= result.hypervolume <= 1.0
    assert set(result.test) >= {"accuracy", "auroc", "auroc_paper", "fpr95"}
    # The initial 30 and the baseline in one bucket, then the steady state's pairs; nothing is
    # trained after the last generation (the front keeps its heads).
    shapes = [tuple(call) for record in result.history for call in record["train_calls"]]
    assert shapes[0] == (31, 31) and {padded for padded, _ in shapes[1:]} <= {1, 2}
    assert len(shapes) <= 1 + 5


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "evojax_prune.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--features", "missing.npz"], "missing.npz: no such file"),
        (["--features", "garbage.npz"], "garbage.npz: not a FeatureSet"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--population", "0"],
         "--population 0: SearchConfig.population_size must be an integer >= 1, got 0"),
        (["--generations", "0"], "--generations 0: SearchConfig.generations must be an integer >= 1, got 0"),
        (["--out", "afile/run"], "afile"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, arguments, message):
    (tmp_path / "garbage.npz").write_text("not numpy")
    (tmp_path / "afile").write_text("a file, not a directory")
    before = sorted(path.name for path in tmp_path.iterdir())
    result = run_cli("run", *arguments, "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_cli_refuses_an_existing_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert cli.main(["run", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["run", "--out", str(tmp_path / "run"), "--overwrite", "--quiet"]) == 2
    assert "not a run's" in capsys.readouterr().err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_default_job_beats_the_baseline_with_a_small_member(tmp_path):
    """The README's main command: `evojax-prune run` on the embedded digits (about 1.5 min here)."""
    result = run_cli("run", "--out", "run", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert max(summary["front"]["test"]["accuracy"]) >= summary["baseline"]["test"]["accuracy"]
    assert min(summary["front"]["active_features"]) < 0.25 * summary["baseline"]["active_features"]


def test_an_evosax_algorithm_runs_a_single_objective_search(digits):
    import jax.numpy as jnp
    from evosax.algorithms import SimpleGA

    simple_ga = SimpleGA(population_size=8, solution=jnp.zeros(digits.num_features))
    result = run_search(digits, tiny_config(generations=2), seed=1, algorithm=simple_ga)
    # The reported members are the lowest-error masks the final population holds.
    assert len(result.history) == 3
    assert np.all(result.validation["accuracy"] == result.validation["accuracy"].max())
    assert result.history[-1]["best_accuracy"] == pytest.approx(result.validation["accuracy"].max())
    with pytest.raises(ValueError, match="works on 5 dimensions, the features have 64"):
        run_search(digits, tiny_config(), algorithm=SimpleGA(population_size=8, solution=jnp.zeros(5)))


def test_front_keeps_the_heads_the_search_trained(digits):
    from evojax_prune.train import trainer

    # An initial population of 6 in buckets of 8: the baseline trains in the first call.
    small = tiny_config(generations=2).replace(search={"population_size": 6, "offspring_size": 8})
    result = run_search(digits, small, seed=1)
    calls = [record["train_calls"] for record in result.history]
    assert calls[0] == [[8, 7]] and all(len(generation) == 1 for generation in calls)
    assert result.history[0]["trained"] == 6  # the baseline rode in the padding row
    # The heads a plain call trains from the front's masks (and the baseline's) are the same.
    everything = np.concatenate([result.masks, np.ones((1, 64), bool)])
    again = trainer.train_population(
        jax.random.split(jax.random.PRNGKey(1), 3)[0], everything, digits.x_train, digits.y_train, small,
        num_classes=digits.num_classes,
    )
    np.testing.assert_array_equal(np.asarray(again.params.hidden_kernel[:-1]), result.params.hidden_kernel)
    baseline = result.baseline_params.output_bias
    np.testing.assert_array_equal(np.asarray(again.params.output_bias[-1]), baseline)
    np.testing.assert_array_equal(np.asarray(again.epochs[:-1]), result.validation["epochs"])
    # Heads beyond the memory budget are not kept: the front is trained again at the end, alike.
    tight = small.replace(engine={"memory_budget_mb": 0.01})
    retrained = run_search(digits, tight, seed=1)
    assert retrained.history[0]["train_calls"] == [[8, 6]]  # no room kept for the baseline
    np.testing.assert_array_equal(retrained.masks, result.masks)
    for leaf in ("hidden_kernel", "output_kernel", "output_bias"):
        np.testing.assert_array_equal(getattr(retrained.params, leaf), getattr(result.params, leaf))
    for split in ("validation", "test"):
        for name, values in getattr(result, split).items():
            if name.startswith("aupr"):
                # The tight budget also scores one head per chunk: the AUPR's float32 sums then differ
                # by an ulp (1.2e-7 seen); every other metric is bit for bit the same.
                np.testing.assert_allclose(getattr(retrained, split)[name], values, rtol=0, atol=5e-7)
            else:
                np.testing.assert_array_equal(getattr(retrained, split)[name], values, err_msg=name)


def test_bucket_sizes_keep_the_compiled_shapes_few():
    from evojax_prune.search.evaluator import bucket_size

    # The authors' budget run generationally: 30 masks, then generations of 34 (fewer after
    # duplicates): one shape.
    assert {bucket_size(count, 34) for count in (30, 34, 33, 18)} == {34}
    # Steady state (2 offspring, population 30): powers of two, not the population.
    assert [bucket_size(count, 30) for count in (1, 2, 3, 5, 9, 15)] == [1, 2, 4, 8, 16, 16]
    assert bucket_size(16, 30) == 30 and bucket_size(30, 30) == 30
    assert bucket_size(31, 30) == 60 and bucket_size(61, 30) == 90
    for count in range(1, 100):
        assert bucket_size(count, 34) >= count


def test_progress_from_python_shows_the_command_lines_lines_and_still_calls_back(digits, capsys):
    from evojax_prune.search.controls import RunControls

    records = []
    small = tiny_config(generations=1).replace(search={"population_size": 4})
    controls = RunControls(progress=True, on_generation=records.append)
    result = run_search(digits, small, seed=0, controls=controls)
    shown = capsys.readouterr().err
    assert [record["generation"] for record in records] == [0, 1]
    for record in result.history:
        assert f"gen {record['generation']:>4}  evals {record['evaluations']:>6}" in shown
    with pytest.raises(TypeError, match="progress must be True or False"):
        RunControls(progress="yes")


def test_the_archive_front_never_loses_a_member_and_its_hypervolume_never_falls(digits):
    searched = tiny_config(generations=6)
    assert searched.search.front == "archive" and searched.preset == "quick"
    assert config.preset("paper").search.front == "population"  # as jMetalPy returned it
    archive = run_search(digits, searched, seed=2)
    population = run_search(digits, searched.replace(search={"front": "population"}), seed=2)
    archived = [record["hypervolume"] for record in archive.history]
    assert np.all(np.diff(archived) >= 0), archived
    # The search itself is the same; only the front it reports differs.
    assert archive.evaluations == population.evaluations
    assert [r["trained"] for r in archive.history] == [r["trained"] for r in population.history]
    for ours, theirs in zip(archived, [record["hypervolume"] for record in population.history], strict=True):
        assert ours >= theirs - 1e-12
    # Every member of the population's front is weakly dominated by a member of the archive's,
    # and the archive's front is non-dominated (pymoo).
    for point in population.objectives:
        assert np.any(np.all(archive.objectives <= point + 1e-12, axis=1))
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    fronts = NonDominatedSorting().do(archive.objectives)
    assert len(fronts[0]) == len(archive.masks)
    assert archive.hypervolume == pytest.approx(archived[-1], abs=1e-6)
