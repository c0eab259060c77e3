import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from evojax_prune.score import metrics

# Compilation, not arithmetic, is what these tests spend time on: every metric
# is compiled once per (n, m) shape, so the tests share a few shapes.
SIZES = [(1, 7), (9, 1), (100, 37), (372, 372)]
TPRS = (0.0, 0.5, 0.95, 1.0)
OOD_METRICS = ("auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out")


@jax.jit
def _all_metrics(ind, ood):
    """``ood_metrics`` (the path evaluate uses) plus FPR at other TPRs, in one compiled call."""
    values = metrics.ood_metrics(ind, ood)
    values["fpr"] = jnp.stack([
        values["fpr95"] if tpr == metrics.FPR_TPR else metrics.fpr_at_tpr(ind, ood, tpr) for tpr in TPRS
    ])
    return values


@jax.jit
def _one_by_one(ind, ood):
    """The single-metric functions, each sorting and searching on its own."""
    return {
        "auroc": metrics.auroc(ind, ood),
        "auroc_paper": metrics.auroc_paper(ind, ood),
        "fpr95": metrics.fpr_at_tpr(ind, ood, 0.95),
        "aupr_in": metrics.aupr_in(ind, ood),
        "aupr_out": metrics.aupr_out(ind, ood),
    }


def _labelled(ind, ood):
    """scikit-learn's layout: InD labelled 1, OoD 0."""
    return np.r_[np.ones(len(ind)), np.zeros(len(ood))], np.r_[ind, ood]


def _sklearn_fpr_at_tpr(ind, ood, tpr):
    labels, scores = _labelled(ind, ood)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fprs[np.argmax(tprs >= tpr)]


def _paper_auroc_loop(ind, ood):
    """The authors' threshold AUROC (S-MOEvoPruneDeepTL ood.py), written out as plain loops."""
    ordered = np.sort(np.asarray(ind, np.float64))
    levels = list(np.arange(0, 1, 0.01)[::-1])
    levels[0] = 0.99999999
    tprs, fprs = [], []
    for position, level in enumerate(levels):
        threshold = ordered[int(len(ordered) * level)]
        called_ind = [score > threshold for score in ind]
        if position == 0:
            called_ind = [False] * len(ind)
        if position == len(levels) - 1:
            called_ind = [True] * len(ind)
        tprs.append(sum(called_ind) / len(ind))
        fprs.append(sum(score > threshold for score in ood) / len(ood))
    tprs.append(1.0)
    fprs.append(1.0)
    area = 0.0
    for k in range(1, len(tprs)):
        area += (fprs[k] - fprs[k - 1]) * (tprs[k] + tprs[k - 1]) / 2
    return area


def _tied_scores(seed, num_ind, num_ood):
    """Integer-valued scores: many ties within and across the two groups."""
    rng = np.random.default_rng(seed)
    ind = rng.integers(0, 8, num_ind).astype(np.float32) + rng.integers(0, 2)
    ood = rng.integers(0, 8, num_ood).astype(np.float32)
    return ind, ood


def _continuous_scores(seed, num_ind, num_ood):
    rng = np.random.default_rng(100 + seed)
    return rng.normal(0.7, 1.0, num_ind).astype(np.float32), rng.normal(0.0, 1.3, num_ood).astype(np.float32)


@pytest.mark.parametrize("kind", ["tied", "continuous"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("num_ind", "num_ood"), SIZES)
def test_ranking_metrics_match_sklearn_and_the_authors_loop(kind, seed, num_ind, num_ood):
    make = _tied_scores if kind == "tied" else _continuous_scores
    ind, ood = make(seed, num_ind, num_ood)
    labels, scores = _labelled(ind, ood)
    got = _all_metrics(jnp.asarray(ind), jnp.asarray(ood))
    assert float(got["auroc"]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert float(got["aupr_in"]) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    assert float(got["aupr_out"]) == pytest.approx(average_precision_score(1 - labels, -scores), abs=1e-6)
    expected_fprs = [_sklearn_fpr_at_tpr(ind, ood, tpr) for tpr in TPRS]
    np.testing.assert_allclose(np.asarray(got["fpr"]), expected_fprs, atol=1e-6)
    assert float(got["auroc_paper"]) == pytest.approx(_paper_auroc_loop(ind, ood), abs=1e-6)


def test_every_metric_depends_on_the_scores_order_only():
    # No score value enters a metric, only comparisons: any strictly increasing transform (the log-odds
    # that msp / odin return instead of the max softmax) gives the same figures, count for count.
    for seed, make in enumerate((_tied_scores, _continuous_scores)):
        ind, ood = make(seed, 372, 372)
        both = np.r_[ind, ood]
        ranks = np.searchsorted(np.unique(both), both).astype(np.float32)  # dense: order and ties kept
        plain = _all_metrics(jnp.asarray(ind), jnp.asarray(ood))
        for transformed in (ranks, np.log1p(ranks) ** 3 - 7.0):
            assert len(np.unique(transformed)) == len(np.unique(both))  # still strictly increasing
            got = _all_metrics(jnp.asarray(transformed[:372]), jnp.asarray(transformed[372:]))
            for name in (*OOD_METRICS, "fpr"):
                np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(plain[name]), err_msg=name)


def test_single_metric_functions_equal_ood_metrics_exactly():
    for seed, make in enumerate((_tied_scores, _continuous_scores)):
        ind, ood = (jnp.asarray(scores) for scores in make(seed, 372, 372))
        shared, separate = _all_metrics(ind, ood), _one_by_one(ind, ood)
        for name in OOD_METRICS:
            assert float(shared[name]) == float(separate[name]), name


def test_fpr_at_tpr_on_a_hand_computed_case():
    # TPR >= 0.95 of 100 InD scores 0..99 needs the 95 largest, threshold 5; the
    # OoD scores 5.5 .. 98.5 (94 of them) are at or above it. One more InD
    # sample (threshold 4) would give 0.95, one fewer misses the target.
    ind = np.arange(100, dtype=np.float32)
    ood = np.arange(100, dtype=np.float32) - 0.5
    assert float(metrics.fpr_at_tpr(jnp.asarray(ind), jnp.asarray(ood), 0.95)) == pytest.approx(0.94)
    assert _sklearn_fpr_at_tpr(ind, ood, 0.95) == pytest.approx(0.94)
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_tpr(jnp.asarray(ind), jnp.asarray(ood), 1.5)


def test_fpr_at_tpr_takes_ind_as_positive_not_ood():
    # InD-positive and OoD-positive FPR95 differ on asymmetric distributions.
    rng = np.random.default_rng(7)
    ind = rng.normal(1.0, 0.3, 372).astype(np.float32)
    ood = rng.normal(0.0, 1.5, 372).astype(np.float32)
    ind_positive = float(_all_metrics(jnp.asarray(ind), jnp.asarray(ood))["fpr"][TPRS.index(0.95)])
    ood_positive = float(_all_metrics(jnp.asarray(-ood), jnp.asarray(-ind))["fpr"][TPRS.index(0.95)])
    assert ind_positive == pytest.approx(_sklearn_fpr_at_tpr(ind, ood, 0.95), abs=1e-6)
    assert abs(ind_positive - ood_positive) > 0.05


@pytest.mark.parametrize(
    ("ind", "ood", "exact", "paper"),
    [
        ([0.3] * 9, [0.3], 0.5, 1.0),  # all equal: chance, but the paper's forced last point gives 1
        ([2.0, 3.0, 4.0, 2.0, 2.5, 3.5, 6.0, 9.0, 2.0], [1.0], 1.0, 1.0),  # perfect separation
        ([0.0, 1.0, 0.5, 0.1, 0.0, 0.2, 0.3, 0.4, 0.6], [2.0], 0.0, 0.0),  # reversed
    ],
)
def test_degenerate_cases(ind, ood, exact, paper):
    got = _all_metrics(jnp.asarray(ind, jnp.float32), jnp.asarray(ood, jnp.float32))
    # Ends are exact: a perfect detector must not score 0.99999994 or 1.0000001.
    assert float(got["auroc"]) == exact
    assert float(got["auroc_paper"]) == paper
    assert _paper_auroc_loop(ind, ood) == pytest.approx(paper)


def test_paper_auroc_is_close_to_exact_auroc_on_smooth_scores():
    rng = np.random.default_rng(3)
    ind = jnp.asarray(rng.normal(1.0, 1.0, 372), jnp.float32)
    ood = jnp.asarray(rng.normal(0.0, 1.0, 372), jnp.float32)
    got = _all_metrics(ind, ood)
    assert float(got["auroc_paper"]) == pytest.approx(float(got["auroc"]), abs=0.01)


def test_paper_quantile_indices_follow_float64_truncation():
    indices = metrics.paper_tpr_quantile_indices(372)
    assert indices.shape == (100,)
    assert indices[0] == 371 and indices[-1] == 0
    assert np.all(np.diff(indices) <= 0)
    levels = np.arange(0, 1, 0.01)[::-1]
    assert list(indices[1:]) == [int(372 * level) for level in levels[1:]]


def test_vmap_over_a_population_equals_rows():
    rng = np.random.default_rng(11)
    ind = rng.integers(0, 20, (6, 100)).astype(np.float32)
    ood = rng.integers(0, 18, (6, 37)).astype(np.float32)
    batched = jax.jit(jax.vmap(_all_metrics))(jnp.asarray(ind), jnp.asarray(ood))
    for row in range(6):
        single = _all_metrics(jnp.asarray(ind[row]), jnp.asarray(ood[row]))
        for name in (*OOD_METRICS, "fpr"):
            # Float32 sums may be ordered differently inside vmap: a few ulps apart.
            np.testing.assert_allclose(batched[name][row], single[name], atol=1e-6, err_msg=name)
        labels, scores = _labelled(ind[row], ood[row])
        assert float(batched["auroc"][row]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_accuracy_and_its_vmap():
    logits = jnp.asarray([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    # The last row ties: argmax takes class 0.
    assert float(metrics.accuracy(logits, jnp.asarray([0, 2, 0, 0]))) == 0.75
    assert metrics.accuracy(logits, jnp.asarray([0, 2, 0, 0])).dtype == jnp.float32
    assert float(metrics.accuracy(logits, jnp.asarray([0, 2, 1, 0]))) == 1.0
    rng = np.random.default_rng(2)
    population_logits = rng.normal(size=(5, 41, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 41)
    batched = jax.jit(jax.vmap(metrics.accuracy, in_axes=(0, None)))(population_logits, labels)
    expected = [(np.argmax(row, axis=1) == labels).mean() for row in population_logits]
    np.testing.assert_allclose(np.asarray(batched), expected, atol=1e-7)


def test_fraction_is_exact_at_the_ends():
    counts = jnp.arange(0, 48)
    got = np.asarray(jax.jit(jax.vmap(lambda count: metrics.fraction(count, 47)))(counts))
    assert got[0] == 0.0 and got[47] == 1.0 and np.all(got <= 1.0)
    np.testing.assert_allclose(got, np.arange(48) / 47, rtol=2e-7)


def test_auroc_sums_in_float_when_pair_counts_would_overflow_int32():
    # 40000 * 30000 = 1.2e9 pairs > 2**30: the float32 summation path.
    rng = np.random.default_rng(5)
    ind = rng.integers(0, 1000, 40_000).astype(np.float32)
    ood = rng.integers(0, 900, 30_000).astype(np.float32)
    expected = roc_auc_score(*_labelled(ind, ood))
    got = float(jax.jit(metrics.auroc)(jnp.asarray(ind), jnp.asarray(ood)))
    assert got == pytest.approx(expected, abs=1e-5)
