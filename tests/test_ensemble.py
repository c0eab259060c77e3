"""Ensembles of front members against hand-computed cases and NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evojax_prune import head
from evojax_prune.analysis import ensemble
from evojax_prune.config import preset
from evojax_prune.data import embedded
from evojax_prune.run.search_result import SearchResult
from evojax_prune.score import evaluate, metrics, odin
from evojax_prune.score.ood_scores import OodSpec

# Three members' predicted classes for five samples (C = 3).
PREDICTIONS = np.array([
    [0, 1, 2, 2, 0],
    [0, 2, 2, 1, 1],
    [1, 2, 0, 0, 2],
])


def test_majority_vote_hand_computed():
    # Sample 0: 0, 0, 1 -> 0.  Sample 1: 1, 2, 2 -> 2.  Sample 2: 2, 2, 0 -> 2.
    # Samples 3 and 4: one vote each for 0, 1, 2 -> the tie goes to class 0.
    votes = ensemble.majority_vote(jnp.asarray(PREDICTIONS), 3)
    np.testing.assert_array_equal(votes, [0, 2, 2, 0, 0])
    # Members 0 and 1 only: sample 1 (1 vs 2) and sample 3 (2 vs 1) tie -> the lower class.
    votes = ensemble.majority_vote(jnp.asarray(PREDICTIONS), 3, jnp.array([True, True, False]))
    np.testing.assert_array_equal(votes, [0, 1, 2, 1, 0])
    # One member: its own predictions.
    votes = ensemble.majority_vote(jnp.asarray(PREDICTIONS), 3, jnp.array([False, False, True]))
    np.testing.assert_array_equal(votes, PREDICTIONS[2])
    assert votes.dtype == jnp.int32 and votes.shape == (5,)


@pytest.mark.parametrize("seed", range(3))
def test_majority_vote_matches_the_authors_bincount(seed):
    rng = np.random.default_rng(seed)
    predictions = rng.integers(0, 4, size=(6, 50))
    members = rng.random(6) < 0.6
    members[seed] = True
    expected = np.apply_along_axis(lambda x: np.argmax(np.bincount(x, minlength=4)), 0, predictions[members])
    np.testing.assert_array_equal(ensemble.majority_vote(jnp.asarray(predictions), 4, jnp.asarray(members)),
                                  expected)


def test_soft_vote_is_the_mean_probability():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=(5, 30)).astype(np.float32)  # (K, N, C)
    members = np.array([True, False, True, True, False])
    soft = ensemble.soft_vote(jnp.asarray(probabilities), jnp.asarray(members))
    np.testing.assert_allclose(soft, probabilities[members].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ensemble.soft_vote(jnp.asarray(probabilities)), probabilities.mean(axis=0),
                               rtol=1e-6)
    assert soft.shape == (30, 4)


def test_mean_score_matches_numpy():
    scores = np.random.default_rng(1).normal(size=(4, 20)).astype(np.float32)
    members = np.array([False, True, True, False])
    np.testing.assert_allclose(ensemble.mean_score(jnp.asarray(scores), jnp.asarray(members)),
                               scores[members].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("num_samples", [20, 37, 100, 360])
def test_tpr_threshold_is_the_highest_reaching_the_rate(num_samples):
    scores = np.random.default_rng(num_samples).normal(size=(3, num_samples)).astype(np.float32)
    thresholds = np.asarray(ensemble.tpr_threshold(jnp.asarray(scores), 0.95))
    for member in range(3):
        called = scores[member] >= thresholds[member]
        assert called.mean() >= 0.95
        # Any higher threshold (the next score up) falls short of 95%.
        higher = np.sort(scores[member])[np.sort(scores[member]) > thresholds[member]]
        if higher.size:
            assert (scores[member] >= higher[0]).mean() < 0.95
    assert np.isinf(ensemble.tpr_threshold(jnp.asarray(scores[0]), 0.0))


def test_single_member_vote_is_fpr_at_tpr():
    rng = np.random.default_rng(2)
    ind, ood = rng.normal(1.0, 1.0, 200).astype(np.float32), rng.normal(0.0, 1.0, 150).astype(np.float32)
    threshold = ensemble.tpr_threshold(jnp.asarray(ind), 0.95)
    vote = ensemble.threshold_vote(jnp.asarray(ind[None]), jnp.asarray(ood[None]), threshold[None])
    assert float(vote.fpr) == pytest.approx(float(metrics.fpr_at_tpr(jnp.asarray(ind), jnp.asarray(ood))))
    assert int(np.sum(np.asarray(vote.ind_votes) == 1)) >= 190  # 95% of 200


def numpy_threshold_vote(ind, ood, thresholds, members):
    voters = members.sum()
    ind_votes = (ind >= thresholds[:, None])[members].sum(axis=0)
    ood_votes = (ood >= thresholds[:, None])[members].sum(axis=0)
    called_ind, called_ood = 2 * ind_votes > voters, 2 * ood_votes > voters
    labels = np.r_[np.ones(ind.shape[1]), np.zeros(ood.shape[1])]
    return {
        "ind_votes": ind_votes, "ood_votes": ood_votes,
        "tpr": called_ind.mean(), "fpr": called_ood.mean(),
        "accuracy": (called_ind.sum() + (~called_ood).sum()) / (ind.shape[1] + ood.shape[1]),
        "auroc": roc_auc_score(labels, np.r_[ind_votes, ood_votes]),
    }


@pytest.mark.parametrize("members", [[1, 1, 1, 1, 1], [1, 1, 0, 1, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]])
def test_threshold_vote_matches_numpy(members):
    rng = np.random.default_rng(len(members) + sum(members))
    members = np.array(members, bool)
    ind = rng.normal(0.8, 1.0, (5, 60)).astype(np.float32)
    ood = rng.normal(0.0, 1.0, (5, 45)).astype(np.float32)
    thresholds = np.quantile(ind, 0.1, axis=1).astype(np.float32)
    vote = ensemble.threshold_vote(jnp.asarray(ind), jnp.asarray(ood), jnp.asarray(thresholds),
                                   jnp.asarray(members))
    expected = numpy_threshold_vote(ind, ood, thresholds, members)
    np.testing.assert_array_equal(vote.ind_votes, expected["ind_votes"])
    np.testing.assert_array_equal(vote.ood_votes, expected["ood_votes"])
    for name in ("tpr", "fpr", "accuracy", "auroc"):
        assert float(getattr(vote, name)) == pytest.approx(expected[name], abs=1e-6), name


def authors_paper_vote_auroc(ind, ood, members):
    """The authors' ensemble AUROC, written as their ood.py and plot_ensembles_OoD.py do it."""
    levels = np.arange(0, 1, 0.01)[::-1]
    levels[0] = 0.99999999
    member_ind, member_ood = [], []
    for k in np.flatnonzero(members):
        ordered = np.sort(ind[k])
        thresholds = np.array([ordered[int(len(ordered) * level)] for level in levels])
        calls_ind = ind[k][None, :] > thresholds[:, None]
        calls_ind[0], calls_ind[-1] = False, True
        member_ind.append(calls_ind.astype(int))
        member_ood.append((ood[k][None, :] > thresholds[:, None]).astype(int))
    majority = lambda calls: np.apply_along_axis(lambda x: np.argmax(np.bincount(x)), 0, np.array(calls))
    tpr = np.append(majority(member_ind).sum(axis=1) / ind.shape[1], 1)
    fpr = np.append(majority(member_ood).sum(axis=1) / ood.shape[1], 1)
    return np.trapezoid(tpr, fpr)


@pytest.mark.parametrize("members", [[1, 1, 1], [1, 1, 0], [1, 0, 1, 1], [0, 1, 0]])
def test_paper_vote_auroc_matches_the_authors_code(members):
    members = np.array(members, bool)
    rng = np.random.default_rng(members.size * 10 + members.sum())
    ind = rng.normal(0.7, 1.0, (members.size, 73)).astype(np.float32)
    ood = rng.normal(0.0, 1.0, (members.size, 51)).astype(np.float32)
    ours = ensemble.paper_vote_auroc(jnp.asarray(ind), jnp.asarray(ood), jnp.asarray(members))
    assert float(ours) == pytest.approx(authors_paper_vote_auroc(ind, ood, members), abs=1e-6)


def test_paper_vote_auroc_of_one_member_is_auroc_paper():
    rng = np.random.default_rng(5)
    ind, ood = rng.normal(0.5, 1, (1, 90)).astype(np.float32), rng.normal(0, 1, (1, 80)).astype(np.float32)
    assert float(ensemble.paper_vote_auroc(jnp.asarray(ind), jnp.asarray(ood))) == pytest.approx(
        float(metrics.auroc_paper(jnp.asarray(ind[0]), jnp.asarray(ood[0]))), abs=1e-7
    )


def test_band_members_hand_computed():
    accuracies = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # Percentiles 50 and 60 of five values: 0.7 and 0.74; 80 and 100: 0.82 and 0.9.
    selected = ensemble.band_members(accuracies, [(50, 60), (80, 100), (0, 100), (10, 12)])
    np.testing.assert_array_equal(selected, [
        [False, False, True, False, False],
        [True, False, False, False, False],
        [True] * 5,
        [False] * 5,  # 0.54 to 0.548: between two members, empty
    ])


@pytest.mark.parametrize("seed", range(4))
def test_band_members_match_the_authors_selection(seed):
    rng = np.random.default_rng(seed)
    # Accuracies are multiples of 1 / N: ties at the band edges are common.
    accuracies = rng.integers(300, 360, size=int(rng.integers(3, 40))) / 360
    selected = ensemble.band_members(accuracies)
    for band, row in zip(ensemble.AUTHORS_BANDS, selected, strict=True):
        low, high = np.percentile(accuracies, band[0]), np.percentile(accuracies, band[1])
        expected = [i for i in range(len(accuracies)) if accuracies[i] >= low and accuracies[i] <= high]
        assert np.flatnonzero(row).tolist() == expected


def test_band_members_rejects_bad_bands():
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 100"):
        ensemble.band_members(np.array([0.5, 0.6]), [(60, 50)])
    with pytest.raises(ValueError, match=r"\(K,\)"):
        ensemble.band_members(np.zeros((0,)))


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
    thresholds = ensemble.tpr_threshold(outputs.reference_scores)
    class_members = rng.random((4, num_members)) < 0.6
    ood_members = rng.random((4, num_members)) < 0.6
    class_members[:, 0] = ood_members[:, 1] = True
    scored = ensemble.band_metrics(outputs, labels, thresholds, class_members, ood_members)
    predictions = np.argmax(np.asarray(outputs.logits), axis=-1)
    for band in range(4):
        majority = ensemble.majority_vote(jnp.asarray(predictions), num_classes, class_members[band])
        assert float(scored.majority_vote_accuracy[band]) == pytest.approx(np.mean(majority == labels))
        vote = ensemble.threshold_vote(outputs.ind_scores, outputs.ood_scores, thresholds, ood_members[band])
        assert float(scored.vote_auroc[band]) == pytest.approx(float(vote.auroc))
        assert float(scored.paper_vote_auroc[band]) == pytest.approx(
            float(ensemble.paper_vote_auroc(outputs.ind_scores, outputs.ood_scores, ood_members[band]))
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
