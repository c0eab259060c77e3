"""The votes of ensemble members against hand-computed cases, NumPy references and the authors' code."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from evojax_prune.analysis import voting
from evojax_prune.score import metrics

# Three members' predicted classes for five samples (C = 3).
PREDICTIONS = np.array([
    [0, 1, 2, 2, 0],
    [0, 2, 2, 1, 1],
    [1, 2, 0, 0, 2],
])


def test_majority_vote_hand_computed():
    # Sample 0: 0, 0, 1 -> 0.  Sample 1: 1, 2, 2 -> 2.  Sample 2: 2, 2, 0 -> 2.
    # Samples 3 and 4: one vote each for 0, 1, 2 -> the tie goes to class 0.
    votes = voting.majority_vote(jnp.asarray(PREDICTIONS), 3)
    np.testing.assert_array_equal(votes, [0, 2, 2, 0, 0])
    # Members 0 and 1 only: sample 1 (1 vs 2) and sample 3 (2 vs 1) tie -> the lower class.
    votes = voting.majority_vote(jnp.asarray(PREDICTIONS), 3, jnp.array([True, True, False]))
    np.testing.assert_array_equal(votes, [0, 1, 2, 1, 0])
    # One member: its own predictions.
    votes = voting.majority_vote(jnp.asarray(PREDICTIONS), 3, jnp.array([False, False, True]))
    np.testing.assert_array_equal(votes, PREDICTIONS[2])
    assert votes.dtype == jnp.int32 and votes.shape == (5,)


@pytest.mark.parametrize("seed", range(3))
def test_majority_vote_matches_the_authors_bincount(seed):
    rng = np.random.default_rng(seed)
    predictions = rng.integers(0, 4, size=(6, 50))
    members = rng.random(6) < 0.6
    members[seed] = True
    expected = np.apply_along_axis(lambda x: np.argmax(np.bincount(x, minlength=4)), 0, predictions[members])
    np.testing.assert_array_equal(voting.majority_vote(jnp.asarray(predictions), 4, jnp.asarray(members)),
                                  expected)


def test_soft_vote_is_the_mean_probability():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=(5, 30)).astype(np.float32)  # (K, N, C)
    members = np.array([True, False, True, True, False])
    soft = voting.soft_vote(jnp.asarray(probabilities), jnp.asarray(members))
    np.testing.assert_allclose(soft, probabilities[members].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(voting.soft_vote(jnp.asarray(probabilities)), probabilities.mean(axis=0),
                               rtol=1e-6)
    assert soft.shape == (30, 4)


def test_mean_score_matches_numpy():
    scores = np.random.default_rng(1).normal(size=(4, 20)).astype(np.float32)
    members = np.array([False, True, True, False])
    np.testing.assert_allclose(voting.mean_score(jnp.asarray(scores), jnp.asarray(members)),
                               scores[members].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("num_samples", [20, 37, 100, 360])
def test_tpr_threshold_is_the_highest_reaching_the_rate(num_samples):
    scores = np.random.default_rng(num_samples).normal(size=(3, num_samples)).astype(np.float32)
    thresholds = np.asarray(voting.tpr_threshold(jnp.asarray(scores), 0.95))
    for member in range(3):
        called = scores[member] >= thresholds[member]
        assert called.mean() >= 0.95
        # Any higher threshold (the next score up) falls short of 95%.
        higher = np.sort(scores[member])[np.sort(scores[member]) > thresholds[member]]
        if higher.size:
            assert (scores[member] >= higher[0]).mean() < 0.95
    assert np.isinf(voting.tpr_threshold(jnp.asarray(scores[0]), 0.0))


def test_single_member_vote_is_fpr_at_tpr():
    rng = np.random.default_rng(2)
    ind, ood = rng.normal(1.0, 1.0, 200).astype(np.float32), rng.normal(0.0, 1.0, 150).astype(np.float32)
    threshold = voting.tpr_threshold(jnp.asarray(ind), 0.95)
    vote = voting.threshold_vote(jnp.asarray(ind[None]), jnp.asarray(ood[None]), threshold[None])
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
    vote = voting.threshold_vote(jnp.asarray(ind), jnp.asarray(ood), jnp.asarray(thresholds),
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
    ours = voting.paper_vote_auroc(jnp.asarray(ind), jnp.asarray(ood), jnp.asarray(members))
    assert float(ours) == pytest.approx(authors_paper_vote_auroc(ind, ood, members), abs=1e-6)


def test_paper_vote_auroc_of_one_member_is_auroc_paper():
    rng = np.random.default_rng(5)
    ind, ood = rng.normal(0.5, 1, (1, 90)).astype(np.float32), rng.normal(0, 1, (1, 80)).astype(np.float32)
    assert float(voting.paper_vote_auroc(jnp.asarray(ind), jnp.asarray(ood))) == pytest.approx(
        float(metrics.auroc_paper(jnp.asarray(ind[0]), jnp.asarray(ood[0]))), abs=1e-7
    )


def test_band_members_hand_computed():
    accuracies = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # Percentiles 50 and 60 of five values: 0.7 and 0.74; 80 and 100: 0.82 and 0.9.
    selected = voting.band_members(accuracies, [(50, 60), (80, 100), (0, 100), (10, 12)])
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
    selected = voting.band_members(accuracies)
    for band, row in zip(voting.AUTHORS_BANDS, selected, strict=True):
        low, high = np.percentile(accuracies, band[0]), np.percentile(accuracies, band[1])
        expected = [i for i in range(len(accuracies)) if accuracies[i] >= low and accuracies[i] <= high]
        assert np.flatnonzero(row).tolist() == expected


def test_band_members_rejects_bad_bands():
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 100"):
        voting.band_members(np.array([0.5, 0.6]), [(60, 50)])
    with pytest.raises(ValueError, match=r"\(K,\)"):
        voting.band_members(np.zeros((0,)))
