"""The paper preset's search protocol: objectives on the test split, the heads trained on the whole
train split, the same head for a mask in every run, and the history's best AUROC the objective's."""

import jax
import numpy as np
import pytest

from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.search import lockstep, selection
from evojax_prune.search.loop import run_searches
from evojax_prune.train import trainer

TRAINING_SEED = 3
CONFIG = preset("quick").replace(
    search={"population_size": 4, "generations": 1, "selection": "test"},
    train={"max_epochs": 4, "training_seed": TRAINING_SEED},
    ood={"auroc": "paper"},
)


@pytest.fixture(scope="module")
def features():
    return embedded.digits()


@pytest.fixture(scope="module")
def two_runs(features):
    return run_searches(features, CONFIG, seed=0, runs=2)


def test_objectives_are_measured_on_the_test_split(two_runs):
    for run in two_runs.runs:
        for name in ("accuracy", "auroc", "auroc_paper", "mem"):
            np.testing.assert_array_equal(run.validation[name], run.test[name])
        assert run.baseline_validation == run.baseline_test


def test_heads_train_on_train_and_validation_from_the_training_seed(features, two_runs):
    # The authors' seed reset: the baseline (all features) is the same head in both runs, and it is
    # the head trained on train + validation from the key a run of seed TRAINING_SEED would use.
    first, second = (run.baseline_params for run in two_runs.runs)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.concatenate([features.x_train, features.x_val])
    y = np.concatenate([features.y_train, features.y_val])
    key = jax.random.split(jax.random.PRNGKey(TRAINING_SEED), 3)[0]
    alone = trainer.train_population(key, np.ones((1, features.num_features), bool), x, y, CONFIG,
                                     num_classes=features.num_classes)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(alone.params), strict=True):
        np.testing.assert_allclose(a, np.asarray(b)[0], rtol=1e-5, atol=1e-6)


def test_history_best_auroc_is_the_objectives_auroc(two_runs):
    for run in two_runs.runs:
        # The final front is the last generation's; with auroc "paper" its best AUROC is the
        # authors' threshold AUROC, not the exact one.
        assert run.history[-1]["best_auroc"] == pytest.approx(run.validation["auroc_paper"].max())
        assert run.validation["auroc_paper"].max() != run.validation["auroc"].max()


def test_search_view_returns_held_out_validation_to_train_only(features):
    view = selection.search_view(features, CONFIG.search)
    assert len(view.y_train) == len(features.y_train) + len(features.y_val)
    np.testing.assert_array_equal(view.x_val, features.x_test)
    np.testing.assert_array_equal(view.ood_val, features.ood_test)
    assert view.metadata["selection"]["train_size"] == len(view.y_train)
    assert selection.search_view(features, preset("quick").search) is features
    assert selection.search_view(view, CONFIG.search) is view  # a view is not merged twice
    shipped = FeatureSet(**{**features.arrays(), "class_names": features.class_names,
                            "metadata": {**features.metadata, "splits": {"val": {"from": "validation"}}}})
    kept_apart = selection.search_view(shipped, CONFIG.search)
    np.testing.assert_array_equal(kept_apart.x_train, features.x_train)


def test_a_mask_on_several_fronts_enters_the_merged_front_once(two_runs):
    # With the seed reset a mask is the same head in every run: a run merged with itself gives
    # its own front back, each mask once, and the same hypervolume.
    run = two_runs.runs[0]
    merged = lockstep.merge([run, run])
    assert len(merged.merged_run) == len(run.masks) and set(merged.merged_run) == {0}
    np.testing.assert_array_equal(np.sort(merged.merged_member), np.arange(len(run.masks)))
    assert merged.hypervolume == pytest.approx(run.hypervolume)
