"""Fold-averaged objectives (the authors' 5-fold SRSMAS and LEAVES) against each fold scored alone."""

import contextlib
import io

import jax
import numpy as np
import pytest

from evojax_prune.analysis import ensemble
from evojax_prune.cli import main as cli
from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.result import METRIC_NAMES
from evojax_prune.run import search_result
from evojax_prune.score import evaluate
from evojax_prune.search import folds as folds_module
from evojax_prune.search.loop import run_search, run_searches
from evojax_prune.train import trainer

CONFIG = preset("quick").replace(search={"population_size": 4, "generations": 1}, train={"max_epochs": 4})
SEED = 2


@pytest.fixture(scope="module")
def folds():
    # Two different stratified splits of the digits stand in for two folds.
    return [embedded.digits(seed=0), embedded.digits(seed=1)]


@pytest.fixture(scope="module")
def averaged_run(folds, tmp_path_factory):
    out = tmp_path_factory.mktemp("folds") / "run"
    return run_search(folds, CONFIG, seed=SEED, out_dir=out), out


@pytest.fixture(scope="module")
def averaged(averaged_run):
    return averaged_run[0]


def _alone(fold, masks):
    """One fold, scored directly: train_population on its train split, evaluate_population on its
    validation and test data, from the key the run's training uses."""
    key = jax.random.split(jax.random.PRNGKey(SEED), 3)[0]
    trained = trainer.train_population(key, masks, fold.x_train, fold.y_train, CONFIG,
                                       num_classes=fold.num_classes)
    return {
        split: evaluate.evaluate_population(trained.params, masks, x, y, ood, CONFIG,
                                            train=(fold.x_train, fold.y_train))
        for split, (x, y, ood) in (("validation", (fold.x_val, fold.y_val, fold.ood_val)),
                                   ("test", (fold.x_test, fold.y_test, fold.ood_test)))
    }, trained


def test_front_metrics_are_the_means_of_each_fold_alone(folds, averaged):
    masks = np.concatenate([averaged.masks, np.ones((1, folds[0].num_features), bool)])
    alone = [_alone(fold, masks) for fold in folds]
    for split, front, baseline in (("validation", averaged.validation, averaged.baseline_validation),
                                   ("test", averaged.test, averaged.baseline_test)):
        for name in ("accuracy", "auroc", "auroc_paper"):
            per_fold = np.stack([np.asarray(getattr(scores[split], name)) for scores, _ in alone])
            mean = per_fold.mean(axis=0)
            np.testing.assert_allclose(front[name], mean[:-1], atol=1e-6)
            assert baseline[name] == pytest.approx(mean[-1], abs=1e-6)
            # The folds differ, so the mean is not just one of them.
            assert not np.allclose(per_fold[0], per_fold[1])
    np.testing.assert_allclose(averaged.validation["mem"], averaged.masks.mean(axis=1))
    # The front's heads are the first fold's.
    first_fold = alone[0][1].params
    for mine, theirs in zip(jax.tree.leaves(averaged.params), jax.tree.leaves(first_fold), strict=True):
        np.testing.assert_allclose(mine, np.asarray(theirs)[:-1], rtol=1e-5, atol=1e-6)


def test_a_fold_run_reads_back_and_its_ensembles_are_the_first_folds_heads(folds, averaged_run):
    result, out = averaged_run
    on_disk, _ = search_result.read_run(out)
    assert on_disk.folds == result.folds == 2
    np.testing.assert_allclose(on_disk.test["accuracy"], result.test["accuracy"])
    # The recorded numbers are fold means; the ensembles score the first fold's heads on the first
    # fold's test split (the reproduction check, which would compare the two, is skipped).
    comparison = ensemble.compare_ensembles(out, folds[0])
    scores, _ = _alone(folds[0], result.masks)
    np.testing.assert_allclose(comparison.member_accuracy, scores["test"].accuracy, atol=1e-6)
    assert not np.allclose(comparison.member_accuracy, result.test["accuracy"])


def test_fold_mean_counts_a_head_diverged_on_any_fold():
    diverged = METRIC_NAMES.index("diverged")
    rows = np.zeros((2, 3, len(METRIC_NAMES)))
    rows[0, :, 0], rows[1, :, 0] = [0.2, 0.4, 0.6], [0.4, 0.8, 1.0]
    rows[1, 2, diverged] = 1.0
    mean = folds_module.fold_mean(rows)
    np.testing.assert_allclose(mean[:, 0], [0.3, 0.6, 0.8])
    np.testing.assert_array_equal(mean[:, diverged], [0, 0, 1])


def test_folds_that_do_not_match_are_refused(folds):
    other = embedded.digits()
    narrower = type(other)(**{**{name: value[:, :32] if name.startswith(("x_", "ood_")) else value
                                 for name, value in other.arrays().items()},
                              "class_names": other.class_names, "metadata": other.metadata})
    with pytest.raises(ValueError, match=r"fold 1 .* D = 32"):
        run_search([folds[0], narrower], CONFIG)
    with pytest.raises(ValueError, match="run_searches: 2 folds"):
        run_searches(folds, CONFIG, runs=2)


def test_cli_refuses_several_runs_of_folds_and_folds_that_do_not_match(folds, tmp_path):
    paths = []
    for index, fold in enumerate(folds):
        paths.append(str(fold.save(tmp_path / f"fold{index}.npz")))
    other = embedded.digits()
    fewer_classes = type(other)(**{**other.arrays(), "class_names": tuple("abcdefghij"),
                                   "metadata": other.metadata})
    paths.append(str(fewer_classes.save(tmp_path / "renamed.npz")))
    for arguments, message in (
        ([*paths[:2], "--runs", "2"], "--runs 2 with 2 folds"),
        ([paths[0], paths[2]], "fold 1 ('digits': D = 64, classes ['a'"),
    ):
        with contextlib.chdir(tmp_path), contextlib.redirect_stderr(io.StringIO()) as stderr:
            status = cli.main(["run", "--features", *arguments, "--out", "out", "--quiet"])
        assert status == 2, stderr.getvalue()
        assert message in stderr.getvalue()
        assert not (tmp_path / "out").exists()
