"""The OoD scores against their published definitions, computed independently in float64.

References: MSP (Hendrycks & Gimpel 2017) = max softmax; MaxLogit (Hendrycks et
al. 2019) = max logit; energy (Liu et al. 2020) = T logsumexp(l / T), with
scipy; Mahalanobis (Lee et al. 2018) with scikit-learn's EmpiricalCovariance on
class-centred training activations. End to end, ``evaluate_population``'s
AUROC of every score is scikit-learn's ``roc_auc_score`` of the reference
scores of the heads' own activations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from evojax_prune import config as cfg
from evojax_prune import head
from evojax_prune.score import evaluate, mahalanobis, metrics, ood_scores
from evojax_prune.train import memory

POPULATION, FEATURES, HIDDEN, CLASSES = 4, 12, 6, 3
NUM_IND, NUM_OOD, NUM_TRAIN = 60, 50, 90


def _logits(seed, shape=(200, 5), scale=8.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype(np.float32)


def _float64_max_softmax(logits):
    logits = np.asarray(logits, np.float64)
    exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exps / exps.sum(axis=-1, keepdims=True)).max(axis=-1)


def _float64_log_max_softmax(logits):
    """log max softmax = -log(1 + sum of the other classes' exp(l_j - l_max)), in float64.

    The probability itself rounds to 1.0 in float64 once the top logit leads by
    about 37; its log (a strictly increasing transform, so the same ranking)
    keeps such samples apart until exp underflows, at leads past about 745.
    """
    ordered = np.sort(np.asarray(logits, np.float64), axis=-1)
    return -np.log1p(np.exp(ordered[:, :-1] - ordered[:, -1:]).sum(axis=-1))


def _float64_log_odds_max_softmax(logits, temperature=1.0):
    """log(S / mean_{j != top} p_j) of p = softmax(logits / T), S = max p, in float64 with scipy.

    ``log(C - 1) - logsumexp_{j != top}((l_j - l_top) / T)``: a strictly
    increasing function of S, so its ranking is S's, the exact one, at any
    lead (no exp of the lead is taken); what ``msp_score`` and
    ``odin.odin_score`` compute in float32.
    """
    ordered = np.sort(np.asarray(logits, np.float64), axis=-1)
    gaps = (ordered[:, :-1] - ordered[:, -1:]) / temperature
    return np.log(gaps.shape[-1]) - logsumexp(gaps, axis=-1)


def _sklearn_mahalanobis(train_hidden, train_labels, hidden, num_classes):
    """Lee et al.'s score with scikit-learn: min over classes of the squared distance, negated."""
    train_hidden, hidden = np.asarray(train_hidden, np.float64), np.asarray(hidden, np.float64)
    present = [c for c in range(num_classes) if np.any(train_labels == c)]
    means = {c: train_hidden[train_labels == c].mean(axis=0) for c in present}
    centred = train_hidden - np.stack([means[c] for c in train_labels])
    covariance = EmpiricalCovariance(assume_centered=True).fit(centred)
    distances = np.stack([covariance.mahalanobis(hidden - means[c]) for c in present], axis=-1)
    return -distances.min(axis=-1), distances


def test_the_registry_is_the_configs_list():
    assert ood_scores.SCORES == cfg.OOD_SCORES
    assert set(ood_scores.LABELS) == set(cfg.OOD_SCORES)
    for name in cfg.OOD_SCORES:
        assert ood_scores.describe(cfg.OodConfig(score=name))


@pytest.mark.parametrize("scale", [0.5, 8.0, 40.0])
def test_msp_is_the_max_softmax(scale):
    logits = _logits(1, scale=scale)
    got = np.asarray(ood_scores.msp_score(jnp.asarray(logits), 1000.0), np.float64)  # T ignored
    expected = _float64_max_softmax(logits)
    np.testing.assert_allclose(1 / (1 + (logits.shape[-1] - 1) * np.exp(-got)), expected, rtol=2e-6)
    # As log-odds the confident samples (MSP 1 - 1e-9, 1.0 in float32) stay apart: relative precision.
    np.testing.assert_allclose(got, _float64_log_odds_max_softmax(logits), rtol=1e-6)


def _two_class_logits(scale, num_each=500, seed=0):
    """float32 logits of two classes, InD a little more confident (wider) than OoD; labels 1 = InD."""
    rng = np.random.default_rng(seed)
    ind, ood = rng.normal(size=(num_each, 2)) * scale * 1.3, rng.normal(size=(num_each, 2)) * scale
    logits = np.concatenate([ind, ood])
    return logits.astype(np.float32), np.r_[np.ones(num_each), np.zeros(num_each)]


@functools.cache
def _jitted_ood_metrics(score, num_ind):
    """A logit score and ``metrics.ood_metrics`` in one jitted call, T traced as ``OodSpec`` has it."""

    def scored(logits, temperature):
        scores = ood_scores.LOGIT_SCORES[score](logits, temperature)
        return metrics.ood_metrics(scores[:num_ind], scores[num_ind:])

    return jax.jit(scored)


def _sklearn_ood_metrics(is_ind, reference):
    fprs, tprs, _ = roc_curve(is_ind, reference, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(is_ind, reference),
        "fpr95": fprs[np.argmax(tprs >= 0.95)],
        "aupr_in": average_precision_score(is_ind, reference),
        "aupr_out": average_precision_score(1 - is_ind, -reference),
    }


# (score, T, logit scale). Past logit gaps of ~87 T, float32's exp underflows: on main's log S
# (msp) and log(C S) (odin; at T = 1 already past gaps of ~17) such samples all tied, and at
# scale 40 the AUROC was off by 0.003 (msp) and 0.06 (odin, T = 1). At T = 1000 only scale 1e5
# reaches the underflow; scales 40 and 200 there guard the flat softmax's precision.
LARGE_SCALE_CASES = [
    ("msp", 1.0, 40.0), ("msp", 1.0, 200.0),
    ("odin", 1.0, 40.0), ("odin", 1.0, 200.0),
    ("odin", 1000.0, 40.0), ("odin", 1000.0, 200.0), ("odin", 1000.0, 1e5),
]


@pytest.mark.parametrize(("score", "temperature", "scale"), LARGE_SCALE_CASES)
def test_softmax_scores_rank_exactly_at_large_logit_scales(score, temperature, scale):
    logits, is_ind = _two_class_logits(scale)
    got = jax.device_get(_jitted_ood_metrics(score, 500)(jnp.asarray(logits), jnp.float32(temperature)))
    reference = _float64_log_odds_max_softmax(logits, temperature)
    # Every InD/OoD pair is more than float32's resolution apart, so exact float32 scoring can
    # (and must) reproduce the float64 figures.
    ind, ood = reference[is_ind == 1], reference[is_ind == 0]
    assert np.all(np.abs(ind[:, None] - ood[None, :]) > 1e-6 * np.maximum(ind[:, None], ood[None, :]))
    log_msp = _float64_log_max_softmax(logits / temperature)
    if len(np.unique(log_msp)) == len(log_msp):  # float64's own log S still separates every sample
        assert roc_auc_score(is_ind, log_msp) == roc_auc_score(is_ind, reference)
    for name, expected in _sklearn_ood_metrics(is_ind, reference).items():
        assert float(got[name]) == pytest.approx(expected, abs=1e-6), name


@pytest.mark.parametrize(("score", "temperature"), [("msp", 1.0), ("odin", 1.0), ("odin", 1000.0)])
def test_evaluate_population_ranks_confident_heads_exactly(problem, score, temperature):
    """End to end: heads whose logits lead by hundreds, scored as a search scores them."""
    params, masks, features, labels, ood_features, _ = problem
    # Output layer x 60: leads of 27 / 300 / 960 (10th / 50th / 90th percentiles).
    confident = params.replace(output_kernel=params.output_kernel * 60, output_bias=params.output_bias * 60)
    config = cfg.preset("quick").replace(ood={"score": score, "temperature": temperature})
    got = evaluate.evaluate_population(confident, masks, features, labels, ood_features, config)
    got = jax.device_get(got)
    rows = np.concatenate([features, ood_features])
    is_ind = np.r_[np.ones(NUM_IND), np.zeros(NUM_OOD)]
    leads = []
    for p in range(POPULATION):
        one = jax.tree.map(lambda leaf, p=p: leaf[p], confident)
        logits = np.asarray(jax.jit(head.apply)(one, jnp.asarray(masks[p]), rows), np.float64)
        ordered = np.sort(logits, axis=-1)
        leads.append(ordered[:, -1] - ordered[:, -2])
        reference = _float64_log_odds_max_softmax(logits, temperature)
        for name, expected in _sklearn_ood_metrics(is_ind, reference).items():
            assert float(getattr(got, name)[p]) == pytest.approx(expected, abs=1e-6), (name, p)
    assert np.median(np.concatenate(leads)) > 87  # most samples past float32's exp range at T = 1


def test_max_logit_is_the_largest_logit():
    logits = _logits(2)
    np.testing.assert_array_equal(ood_scores.max_logit_score(jnp.asarray(logits)), logits.max(axis=-1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 10.0, 1000.0])
def test_energy_is_t_logsumexp(temperature):
    logits = _logits(3)
    got = ood_scores.energy_score(jnp.asarray(logits), temperature)
    expected = temperature * logsumexp(np.asarray(logits, np.float64) / temperature, axis=-1)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("num_train", [300, 12])  # full rank, and fewer samples than units
def test_mahalanobis_matches_scikit_learn(num_train):
    rng = np.random.default_rng(4)
    hidden_units, num_classes = 10, 4
    train_labels = rng.integers(0, num_classes, num_train)
    offsets = rng.normal(size=(num_classes, hidden_units)) * 3
    mixing = rng.normal(size=(hidden_units, hidden_units))
    train_hidden = np.maximum(rng.normal(size=(num_train, hidden_units)) @ mixing + offsets[train_labels], 0)
    train_hidden[:, 3] = 0.0  # a dead unit: a zero row and column of the covariance
    hidden = np.maximum(rng.normal(size=(40, hidden_units)) @ mixing * 1.3 + 1.0, 0)
    train_hidden, hidden = train_hidden.astype(np.float32), hidden.astype(np.float32)

    gaussians = mahalanobis.fit(jnp.asarray(train_hidden), jnp.asarray(train_labels), num_classes)
    distances = np.asarray(mahalanobis.squared_distances(gaussians, jnp.asarray(hidden)), np.float64)
    got = np.asarray(mahalanobis.mahalanobis_score(gaussians, jnp.asarray(hidden)), np.float64)
    expected, expected_distances = _sklearn_mahalanobis(train_hidden, train_labels, hidden, num_classes)
    np.testing.assert_allclose(distances, expected_distances, rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-4)
    assert np.all(distances >= 0)


def test_mahalanobis_of_an_absent_class_and_of_no_variance():
    rng = np.random.default_rng(5)
    train_hidden = rng.random((30, 4)).astype(np.float32)
    labels = rng.integers(0, 2, 30)  # class 2 has no training sample
    gaussians = mahalanobis.fit(jnp.asarray(train_hidden), jnp.asarray(labels), 3)
    distances = np.asarray(mahalanobis.squared_distances(gaussians, jnp.asarray(train_hidden[:5])))
    assert np.all(np.isinf(distances[:, 2])) and np.all(np.isfinite(distances[:, :2]))
    # A head that sees nothing (all activations 0): every distance 0, every score ties.
    dead = mahalanobis.fit(jnp.zeros((30, 4)), jnp.asarray(labels), 3)
    np.testing.assert_array_equal(mahalanobis.mahalanobis_score(dead, jnp.ones((5, 4))), np.zeros(5))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    params = head.HeadParams(
        hidden_kernel=jnp.asarray(rng.normal(size=(POPULATION, FEATURES, HIDDEN)) * 0.4, jnp.float32),
        output_kernel=jnp.asarray(rng.normal(size=(POPULATION, HIDDEN, CLASSES)) * 3.0, jnp.float32),
        output_bias=jnp.asarray(rng.normal(size=(POPULATION, CLASSES)), jnp.float32),
    )
    masks = rng.random((POPULATION, FEATURES)) < 0.6
    masks[1] = True
    centres = rng.normal(size=(CLASSES, FEATURES)) * 1.5
    y_train = rng.integers(0, CLASSES, NUM_TRAIN)
    x_train = (rng.normal(size=(NUM_TRAIN, FEATURES)) + centres[y_train]).astype(np.float32)
    labels = rng.integers(0, CLASSES, NUM_IND)
    features = (rng.normal(size=(NUM_IND, FEATURES)) + centres[labels]).astype(np.float32)
    ood_features = (rng.normal(size=(NUM_OOD, FEATURES)) * 2.0).astype(np.float32)
    return params, masks, features, labels, ood_features, (x_train, y_train)


def _reference_scores(score, one, mask, rows, train, temperature):
    """float64 reference scores of one head on ``rows``, from the head's own float32 activations."""
    hidden = np.asarray(jax.jit(head.last_hidden)(one, mask, rows), np.float64)
    logits = hidden @ np.asarray(one.output_kernel, np.float64) + np.asarray(one.output_bias, np.float64)
    if score == "odin":
        return _float64_log_odds_max_softmax(logits, temperature)
    if score == "msp":
        return _float64_log_odds_max_softmax(logits)
    if score == "maxlogit":
        return logits.max(axis=-1)
    if score == "energy":
        return temperature * logsumexp(logits / temperature, axis=-1)
    x_train, y_train = train
    train_hidden = np.asarray(jax.jit(head.last_hidden)(one, mask, x_train), np.float64)
    return _sklearn_mahalanobis(train_hidden, y_train, hidden, CLASSES)[0]


@pytest.mark.parametrize("score", cfg.OOD_SCORES)
def test_evaluate_population_auroc_is_sklearns_of_the_reference_scores(problem, score):
    params, masks, features, labels, ood_features, train = problem
    temperature = {"odin": 50.0, "energy": 2.0}.get(score, 1.0)
    config = cfg.preset("quick").replace(
        ood={"score": score, "temperature": 50.0, "energy_temperature": 2.0}
    )
    got = evaluate.evaluate_population(params, masks, features, labels, ood_features, config, train=train)
    rows = np.concatenate([features, ood_features])
    is_ind = np.r_[np.ones(NUM_IND), np.zeros(NUM_OOD)]
    aurocs = []
    for p in range(POPULATION):
        one = jax.tree.map(lambda leaf, p=p: leaf[p], params)
        reference = _reference_scores(score, one, jnp.asarray(masks[p]), rows, train, temperature)
        aurocs.append(roc_auc_score(is_ind, reference))
        assert float(got.auroc[p]) == pytest.approx(aurocs[-1], abs=1e-6), (score, p)
    assert len(set(np.round(aurocs, 6))) > 1  # the heads differ: the comparison can fail


def test_every_score_is_its_own_objective(problem):
    params, masks, features, labels, ood_features, train = problem
    aurocs = {
        score: np.asarray(evaluate.evaluate_population(
            params, masks, features, labels, ood_features, cfg.preset("quick").replace(ood={"score": score}),
            train=train,
        ).auroc)
        for score in cfg.OOD_SCORES
    }
    assert len({tuple(np.round(value, 6)) for value in aurocs.values()}) == len(cfg.OOD_SCORES)


def test_energy_uses_its_own_temperature(problem):
    params, masks, features, labels, ood_features, _ = problem
    base = cfg.preset("quick").replace(ood={"score": "energy"})
    auroc = lambda config: np.asarray(
        evaluate.evaluate_population(params, masks, features, labels, ood_features, config).auroc
    )
    plain = auroc(base)
    np.testing.assert_array_equal(auroc(base.replace(ood={"temperature": 3.0})), plain)
    assert not np.allclose(auroc(base.replace(ood={"energy_temperature": 30.0})), plain)


def test_mahalanobis_needs_the_training_split(problem):
    params, masks, features, labels, ood_features, (x_train, y_train) = problem
    config = cfg.preset("quick").replace(ood={"score": "mahalanobis"})
    with pytest.raises(ValueError, match=r"'mahalanobis'.*train=\(x_train, y_train\)"):
        evaluate.evaluate_population(params, masks, features, labels, ood_features, config)
    with pytest.raises(ValueError, match="x_train"):
        evaluate.evaluate_population(params, masks, features, labels, ood_features, config,
                                     train=(x_train[:, :3], y_train))
    with pytest.raises(ValueError, match="y_train"):
        evaluate.evaluate_population(params, masks, features, labels, ood_features, config,
                                     train=(x_train, y_train[:-1]))


def test_mahalanobis_chunked_equals_whole_and_the_memory_model_counts_the_training_split(problem):
    params, masks, features, labels, ood_features, train = problem
    config = cfg.preset("quick").replace(ood={"score": "mahalanobis"})
    whole = evaluate.evaluate_population(params, masks, features, labels, ood_features, config,
                                         chunk_size=POPULATION, train=train)
    chunked = evaluate.evaluate_population(params, masks, features, labels, ood_features, config,
                                           chunk_size=3, train=train)
    np.testing.assert_allclose(chunked.auroc, whole.auroc, atol=1e-6)
    shapes = (744, 2048, 512, 3)
    plain = memory.scoring_bytes(*shapes, perturb=False)
    fitted = memory.scoring_bytes(*shapes, perturb=False, num_train_rows=2520)
    # RPS: the training rows' masked input (2520 x 2048 floats) dominates what Mahalanobis adds.
    assert fitted - plain >= 4 * (2520 * 2048 + 3 * 512 * 512)
    assert evaluate.auto_chunk_size(*shapes, perturb=False, memory_budget_mb=2048, num_train_rows=2520) < (
        evaluate.auto_chunk_size(*shapes, perturb=False, memory_budget_mb=2048)
    )


@pytest.mark.parametrize("score", ["maxlogit", "mahalanobis"])
def test_two_hidden_layers_pruning_neurons_score_the_second_layer(problem, score):
    """The last hidden layer of 2 layers, neurons of both pruned (HeadConfig.prune "both")."""
    _, _, features, labels, ood_features, train = problem
    rng = np.random.default_rng(7)
    params = head.HeadParams(
        hidden_kernel=jnp.asarray(rng.normal(size=(POPULATION, FEATURES, HIDDEN)) * 0.4, jnp.float32),
        output_kernel=jnp.asarray(rng.normal(size=(POPULATION, HIDDEN, CLASSES)) * 3.0, jnp.float32),
        output_bias=jnp.asarray(rng.normal(size=(POPULATION, CLASSES)), jnp.float32),
        second_kernel=jnp.asarray(rng.normal(size=(POPULATION, HIDDEN, HIDDEN)) * 0.5, jnp.float32),
    )
    masks = rng.random((POPULATION, 2 * HIDDEN)) < 0.7
    config = cfg.preset("quick").replace(head={"hidden": HIDDEN, "hidden_layers": 2, "prune": "both"},
                                         ood={"score": score})
    got = evaluate.evaluate_population(params, masks, features, labels, ood_features, config, train=train)

    def activations(p, x):  # numpy, float64: relu(relu(x W1) * m1 W2) * m2
        first, second = masks[p, :HIDDEN], masks[p, HIDDEN:]
        kernel = lambda name: np.asarray(getattr(params, name)[p], np.float64)
        hidden = np.maximum(np.asarray(x, np.float64) @ kernel("hidden_kernel"), 0) * first
        return np.maximum(hidden @ kernel("second_kernel"), 0) * second

    rows = np.concatenate([features, ood_features])
    is_ind = np.r_[np.ones(NUM_IND), np.zeros(NUM_OOD)]
    for p in range(POPULATION):
        hidden = activations(p, rows)
        if score == "maxlogit":
            reference = (hidden @ np.asarray(params.output_kernel[p], np.float64)
                         + np.asarray(params.output_bias[p], np.float64)).max(axis=-1)
        else:
            reference = _sklearn_mahalanobis(activations(p, train[0]), train[1], hidden, CLASSES)[0]
        assert float(got.auroc[p]) == pytest.approx(roc_auc_score(is_ind, reference), abs=1e-6), p
