import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from evojax_prune import head
from evojax_prune.score import odin

# float32 carries about 7 significant digits: two scores closer than this
# (relative) cannot be ordered reliably by any float32 computation.
FLOAT32_RESOLUTION = 1e-6

# Jitted once here: eager calls would compile every primitive separately.
odin_score = jax.jit(odin.odin_score)
max_softmax_probability = jax.jit(odin.max_softmax_probability)


def _reference_log_score(logits, temperature):
    """float64, scipy: log(S / mean_{j != top} p_j) = -log mean_{j != top} exp((l_j - l_top) / T)."""
    ordered = np.sort(logits.astype(np.float64), axis=-1)
    gaps = (ordered[..., :-1] - ordered[..., -1:]) / temperature
    return np.log(gaps.shape[-1]) - logsumexp(gaps, axis=-1)


def _reference_probability(logits, temperature):
    scaled = logits.astype(np.float64) / temperature
    exps = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return (exps / exps.sum(axis=-1, keepdims=True)).max(axis=-1)


def _realistic_logits(seed, num_classes, std, num_each=500):
    """InD logits a little more confident (larger spread) than OoD ones, float32."""
    rng = np.random.default_rng(seed)
    ind = rng.normal(size=(num_each, num_classes)) * std * 1.3
    ood = rng.normal(size=(num_each, num_classes)) * std
    return np.concatenate([ind, ood]).astype(np.float32), np.r_[np.ones(num_each), np.zeros(num_each)]


def _misordered_pairs_beyond(scores, reference, relative_gap):
    """Pairs the reference separates by more than ``relative_gap`` that ``scores`` tie or reverse."""
    reference_gap = reference[None, :] - reference[:, None]  # [i, j] = ref_j - ref_i
    separated = reference_gap > relative_gap * np.abs(reference)[None, :]
    return int(np.sum(separated & (scores[None, :] <= scores[:, None])))


def _close_ind_ood_pairs(reference, labels, relative_gap):
    ind, ood = reference[labels == 1], reference[labels == 0]
    scale = np.maximum(np.abs(ind)[:, None], np.abs(ood)[None, :])
    return int(np.sum(np.abs(ind[:, None] - ood[None, :]) <= relative_gap * scale))


@pytest.mark.parametrize("num_classes", [3, 10])
@pytest.mark.parametrize("std", [5.0, 20.0])
@pytest.mark.parametrize("seed", range(2))
def test_odin_score_keeps_the_float64_ranking(num_classes, std, seed):
    logits, labels = _realistic_logits(seed, num_classes, std)
    reference = _reference_log_score(logits, 1000.0)
    scores = np.asarray(odin_score(jnp.asarray(logits), 1000.0), np.float64)

    np.testing.assert_allclose(scores, reference, rtol=FLOAT32_RESOLUTION)
    # Every pair float32 can resolve is ordered as in float64.
    assert _misordered_pairs_beyond(scores, reference, FLOAT32_RESOLUTION) == 0
    # So the AUROC is the float64 one, up to InD/OoD pairs closer than float32 resolution.
    unresolvable = _close_ind_ood_pairs(reference, labels, FLOAT32_RESOLUTION)
    difference = abs(roc_auc_score(labels, scores) - roc_auc_score(labels, reference))
    assert difference <= unresolvable / (500 * 500) + 1e-12


def test_naive_float32_softmax_fails_the_same_check():
    # The check above has teeth: the plain float32 softmax ties and reverses
    # pairs the float64 reference separates by far more than float32 resolution,
    # and its AUROC moves.
    auroc_changed = 0
    for seed in range(4):
        logits, labels = _realistic_logits(seed, 3, 5.0)
        reference = _reference_log_score(logits, 1000.0)
        naive = np.asarray(jax.nn.softmax(jnp.asarray(logits) / 1000.0, axis=-1).max(axis=-1), np.float64)
        assert len(np.unique(naive)) < len(naive)  # ties
        assert _misordered_pairs_beyond(naive, reference, 5 * FLOAT32_RESOLUTION) > 0
        auroc_changed += roc_auc_score(labels, naive) != roc_auc_score(labels, reference)
    assert auroc_changed >= 2


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0, 1000.0, 1e6])
def test_score_is_accurate_at_every_temperature(temperature):
    logits, _ = _realistic_logits(6, 10, 10.0, num_each=100)
    scores = np.asarray(odin_score(jnp.asarray(logits), temperature), np.float64)
    reference = _reference_log_score(logits, temperature)
    # Relative to the score, or to log C when the score itself is tiny.
    np.testing.assert_allclose(scores, reference, rtol=FLOAT32_RESOLUTION, atol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_max_softmax_probability_and_its_link_to_the_score(temperature):
    logits, _ = _realistic_logits(3, 10, 10.0, num_each=100)
    probability = np.asarray(max_softmax_probability(jnp.asarray(logits), temperature))
    np.testing.assert_allclose(probability, _reference_probability(logits, temperature), rtol=1e-6)
    assert np.all(probability >= 1 / 10 - 1e-7) and np.all(probability <= 1.0)
    score = np.asarray(odin_score(jnp.asarray(logits), temperature), np.float64)
    np.testing.assert_allclose(1 / (1 + 9 * np.exp(-score)), probability, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_two_classes_score_the_margin_over_t(temperature):
    logits = np.random.default_rng(8).normal(size=(50, 2)).astype(np.float32) * 300
    margin = np.abs(logits[:, 0].astype(np.float64) - logits[:, 1]) / temperature
    np.testing.assert_allclose(np.asarray(odin_score(jnp.asarray(logits), temperature)), margin, rtol=2e-7)


def test_score_range_shapes_and_extremes():
    equal = jnp.full((4, 3), 7.0)
    np.testing.assert_array_equal(np.asarray(odin_score(equal, 1000.0)), 0.0)
    # One class taking all the mass at T = 1: the lead plus log of (C - 1) over the others' mean; no overflow,
    # and still ranked where S itself is 1.0.
    confident = jnp.asarray([[1e4, -1e4, 0.0], [1e4 + 1, -1e4, 0.0]])
    np.testing.assert_allclose(np.asarray(odin_score(confident, 1.0)), 1e4 + np.array([0, 1]) + np.log(2.0),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(max_softmax_probability(confident, 1.0)), 1.0)
    assert np.all(np.asarray(odin.odin_score(jnp.ones((3, 1)), 1.0)) == 0.0)  # one class: S = 1 everywhere
    population = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7, 3)), jnp.float16)
    scores = jax.jit(odin.odin_score)(population)
    assert scores.shape == (5, 7) and scores.dtype == jnp.float32
    # Temperature changes the ranking for C > 2 (a top-2 gap vs the spread of the rest).
    logits = jnp.asarray([[5.0, 4.9, -50.0], [5.0, 2.0, 2.0]])
    assert np.argmax(odin_score(logits, 1.0)) != np.argmax(odin_score(logits, 1000.0))


def _linear_logit_fn(weights, bias):
    return lambda x: x @ weights + bias


def test_odin_perturb_takes_the_gradient_sign_step():
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(6, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    features = rng.normal(size=(30, 6)).astype(np.float32)
    temperature, epsilon = 1000.0, 0.01
    logit_fn = _linear_logit_fn(jnp.asarray(weights), jnp.asarray(bias))
    perturb = jax.jit(lambda x: odin.odin_perturb(logit_fn, x, epsilon, temperature))
    perturbed = np.asarray(perturb(jnp.asarray(features)))
    # d/dx log softmax_k(xW/T) = (W[:, k] - W p) / T for the predicted class k.
    logits = features.astype(np.float64) @ weights + bias
    scaled = logits / temperature
    probabilities = np.exp(scaled - scaled.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    predicted = np.argmax(logits, axis=1)
    gradient = (weights.T[predicted] - probabilities @ weights.T) / temperature
    decided = np.abs(gradient) > 1e-4 * np.abs(gradient).max()
    expected = features - epsilon * np.sign(-gradient)
    np.testing.assert_allclose(perturbed[decided], expected[decided], atol=1e-6)
    # The step raises every sample's score (first order: epsilon * |grad|_1 > 0).
    before = odin_score(jnp.asarray(logits, jnp.float32), temperature)
    after = odin_score(jnp.asarray(perturbed @ weights + bias), temperature)
    assert np.all(np.asarray(after) > np.asarray(before))


@pytest.mark.parametrize("scale", [10.0, 40.0])
def test_odin_perturb_keeps_odins_sign_for_confident_heads(scale):
    # At T = 1 a confident head's log-softmax gradient rounds away in float32: S rounds to 1 and the
    # top class's term cancels (gaps past ~17), then the other classes' p_j underflow (past ~87). On
    # the float32 log_softmax gradient, scale 40: 347 of 2400 signs reversed and 588 zero.
    rng = np.random.default_rng(9)
    weights = (rng.normal(size=(6, 3)) * scale).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    features = rng.normal(size=(400, 6)).astype(np.float32)
    epsilon = 0.01
    logit_fn = _linear_logit_fn(jnp.asarray(weights), jnp.asarray(bias))
    perturb = jax.jit(lambda x: odin.odin_perturb(logit_fn, x, epsilon, 1.0))
    perturbed = np.asarray(perturb(jnp.asarray(features)))
    # float64: grad log S = sum_{j != k} p_j (W[:, k] - W[:, j]), without forming 1 - p_k.
    logits = features.astype(np.float64) @ weights + bias
    probabilities = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    predicted = np.argmax(logits, axis=1)
    gradient = np.zeros_like(features, dtype=np.float64)
    for j in range(3):
        weight = np.where(predicted == j, 0.0, probabilities[:, j])[:, None]
        gradient += weight * (weights.T[predicted] - weights.T[j])
    decided = np.abs(gradient) > 1e-6 * np.abs(gradient).max(axis=1, keepdims=True)
    assert decided.mean() > 0.99
    expected = features - epsilon * np.sign(-gradient)
    np.testing.assert_allclose(perturbed[decided], expected[decided], atol=1e-6)


def test_odin_perturb_is_off_at_zero_and_leaves_pruned_features_alone():
    features = jnp.asarray(np.random.default_rng(5).normal(size=(12, 8)), jnp.float32)
    params = jax.jit(head.init, static_argnums=(1, 2, 3))(jax.random.key(0), 8, 3, 16)
    mask = jnp.asarray([True, False] * 4)
    logit_fn = lambda x: head.apply(params, mask, x)
    assert odin.odin_perturb(logit_fn, features, 0.0, 1000.0) is features
    perturbed = np.asarray(jax.jit(lambda x: odin.odin_perturb(logit_fn, x, 0.05, 1000.0))(features))
    moved = np.abs(perturbed - np.asarray(features))
    assert np.all(moved[:, ~np.asarray(mask)] == 0.0)  # no gradient through pruned features
    assert np.all(moved <= 0.05 + 1e-6) and moved[:, np.asarray(mask)].mean() > 0.04
