"""Ensembles of front members (their outputs, all bands at once, a run compared) against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune import head
from evojax_prune.analysis import ensemble, voting
from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.run.search_result import SearchResult
from evojax_prune.score import evaluate, odin
from evojax_prune.score.ood_scores import OodSpec


def test_band_metrics_equal_the_functions_band_by_band():
    rng = np.random.default_rng(3)
    num_members, num_ind, num_ood, num_classes = 5, 40, 30, 3
    outputs = ensemble.MemberOutputs(
        logits=jnp.asarray(rng.normal(size=(num_members, num_ind, num_classes)), jnp.float32),
        ind_scores=jnp.asarray(rng.normal(0.5, 1, (num_members, num_ind)), jnp.float32),
        ood_scores=jnp.asarray(rng.normal(0, 1, (num_members, num_ood)), jnp.float32),
        reference_scores=jnp.asarray(rng.normal(0.5, 1, (num_members, 50)), jnp.float32),
    )
    labels = jnp.asarray(rng.integers(0, num_classes, num_ind))
    thresholds = voting.tpr_threshold(outputs.reference_scores)
    class_members = rng.random((4, num_members)) < 0.6
    ood_members = rng.random((4, num_members)) < 0.6
    class_members[:, 0] = ood_members[:, 1] = True
    scored = ensemble.band_metrics(outputs, labels, thresholds, class_members, ood_members)
    predictions = np.argmax(np.asarray(outputs.logits), axis=-1)
    for band in range(4):
        majority = voting.majority_vote(jnp.asarray(predictions), num_classes, class_members[band])
        assert float(scored.majority_vote_accuracy[band]) == pytest.approx(np.mean(majority == labels))
        vote = voting.threshold_vote(outputs.ind_scores, outputs.ood_scores, thresholds, ood_members[band])
        assert float(scored.vote_auroc[band]) == pytest.approx(float(vote.auroc))
        assert float(scored.paper_vote_auroc[band]) == pytest.approx(
            float(voting.paper_vote_auroc(outputs.ind_scores, outputs.ood_scores, ood_members[band]))
        )


@pytest.mark.parametrize("epsilon", [0.0, 0.01])
def test_member_outputs_are_each_heads_logits_and_odin_scores(epsilon):
    rng = np.random.default_rng(4)
    num_members, num_features, num_classes = 3, 12, 4
    params = jax.vmap(lambda key: head.init(key, num_features, num_classes, 8))(
        jax.random.split(jax.random.PRNGKey(1), num_members)
    )
    masks = jnp.asarray(rng.random((num_members, num_features)) < 0.7)
    x, ood, reference = (jnp.asarray(rng.random((n, num_features)), jnp.float32) for n in (9, 7, 5))
    outputs = ensemble.member_outputs(params, masks, x, ood, reference,
                                     OodSpec(temperature=100.0, epsilon=epsilon))
    assert outputs.logits.shape == (3, 9, 4) and outputs.ind_scores.shape == (3, 9)
    assert outputs.ood_scores.shape == (3, 7) and outputs.reference_scores.shape == (3, 5)

    @jax.jit
    def reference_head(one, mask, rows):  # one head, written out from head.apply and odin
        logit_fn = lambda inputs: head.apply(one, mask, inputs)
        perturbed = odin.odin_perturb(logit_fn, rows, epsilon, 100.0)
        return logit_fn(rows), odin.odin_score(logit_fn(perturbed), 100.0)

    rows = jnp.concatenate([x, ood, reference])
    for k in range(num_members):
        logits, scores = reference_head(jax.tree.map(lambda leaf, k=k: leaf[k], params), masks[k], rows)
        np.testing.assert_allclose(outputs.logits[k], logits[:9], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs.ind_scores[k], scores[:9], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(outputs.ood_scores[k], scores[9:16], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(outputs.reference_scores[k], scores[16:], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- compare_ensembles


@pytest.fixture(scope="module")
def digits():
    return embedded.digits()


def numpy_logits(params, mask, x):
    hidden = np.maximum((x * mask) @ np.asarray(params.hidden_kernel, np.float64), 0)
    return hidden @ np.asarray(params.output_kernel, np.float64) + np.asarray(params.output_bias, np.float64)


@pytest.fixture(scope="module")
def untrained_front(digits):
    """A SearchResult of six heads fitted by one least-squares step, no search: fast and deterministic."""
    config = preset("quick").replace(head={"hidden": 32})
    rng = np.random.default_rng(0)
    num_members, num_features = 6, digits.num_features
    masks = rng.random((num_members, num_features)) < rng.uniform(0.3, 0.9, (num_members, 1))
    params = jax.vmap(lambda key: head.init(key, num_features, digits.num_classes, 32))(
        jax.random.split(jax.random.PRNGKey(0), num_members)
    )
    # Fit each output layer by least squares on random ReLU features, so members differ and are accurate.
    targets = np.eye(digits.num_classes)[digits.y_train]
    kernels, biases = [], []
    for k in range(num_members):
        hidden = np.maximum((digits.x_train * masks[k]) @ np.asarray(params.hidden_kernel[k]), 0)
        design = np.c_[hidden, np.ones(len(hidden))]
        solution = np.linalg.lstsq(design, targets, rcond=None)[0]
        kernels.append(solution[:-1])
        biases.append(solution[-1])
    params = head.HeadParams(np.asarray(params.hidden_kernel), np.asarray(kernels, np.float32),
                             np.asarray(biases, np.float32))
    scored = {
        split: evaluate.evaluate_population(params, masks, x, y, ood, config)
        for split, (x, y, ood) in {"validation": (digits.x_val, digits.y_val, digits.ood_val),
                                   "test": (digits.x_test, digits.y_test, digits.ood_test)}.items()
    }
    as_dict = lambda scores: {name: np.asarray(getattr(scores, name), np.float64)
                              for name in ("accuracy", "mem", "auroc", "auroc_paper", "fpr95")}
    return SearchResult(
        masks=masks, validation=as_dict(scored["validation"]), test=as_dict(scored["test"]), params=params,
        baseline_validation={"accuracy": 0.5, "auroc": 0.5}, baseline_test={"accuracy": 0.5, "auroc": 0.5},
        baseline_params=jax.tree.map(lambda leaf: leaf[0], params), history=[], hypervolume=0.0,
        evaluations=num_members, wall_time=0.0, config=config, seed=0,
    )


def test_compare_ensembles_against_numpy(untrained_front, digits):
    result = untrained_front
    comparison = ensemble.compare_ensembles(result, digits, bands=[(0, 100), (50, 100)])
    np.testing.assert_allclose(comparison.member_accuracy, result.test["accuracy"], atol=1e-6)
    assert 0.5 < comparison.best_accuracy < 1
    predictions = np.stack([np.argmax(numpy_logits(jax.tree.map(lambda leaf, k=k: leaf[k], result.params),
                                                   result.masks[k], digits.x_test), axis=-1)
                            for k in range(len(result.masks))])
    whole, upper = comparison.bands
    assert whole.class_members == tuple(range(6)) and whole.ood_members == tuple(range(6))
    for band in (whole, upper):
        members = list(band.class_members)
        votes = np.apply_along_axis(lambda x: np.argmax(np.bincount(x, minlength=10)), 0,
                                    predictions[members])
        assert band.majority_vote_accuracy == pytest.approx(np.mean(votes == digits.y_test), abs=1e-6)
        assert band.best_member_accuracy == pytest.approx(result.test["accuracy"][members].max(), abs=1e-6)
        chosen = members[int(np.argmax(result.validation["accuracy"][members]))]
        assert band.chosen_member_accuracy == pytest.approx(result.test["accuracy"][chosen], abs=1e-6)
    # The upper half of validation accuracies: members at or above the median.
    median = np.percentile(result.validation["accuracy"], 50)
    assert upper.class_members == tuple(np.flatnonzero(result.validation["accuracy"] >= median))
    as_json = comparison.to_dict()
    assert as_json["bands"][0]["class_members"] == list(range(6))
    assert "| 0-100 | 6 |" in comparison.table()


def test_compare_ensembles_rejects_features_of_another_run(untrained_front, digits):
    other_split = embedded.digits(seed=5)
    with pytest.raises(ValueError, match="do not reproduce the run"):
        ensemble.compare_ensembles(untrained_front, other_split)
    with pytest.raises(ValueError, match="needs its FeatureSet"):
        ensemble.compare_ensembles(untrained_front)
    with pytest.raises(ValueError, match="ood_ranking"):
        ensemble.compare_ensembles(untrained_front, digits, ood_ranking="memory")
