import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from evojax_prune import config as cfg
from evojax_prune import head
from evojax_prune.score import evaluate, metrics, odin
from evojax_prune.train import memory

POPULATION, FEATURES, HIDDEN, CLASSES, NUM_IND, NUM_OOD = 5, 16, 8, 3, 50, 40
FIELDS = ("accuracy", "mem", "auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    # Built in NumPy (no compile); the output scale makes logits O(10), like a trained head's.
    params = head.HeadParams(
        hidden_kernel=jnp.asarray(rng.normal(size=(POPULATION, FEATURES, HIDDEN)) * 0.3, jnp.float32),
        output_kernel=jnp.asarray(rng.normal(size=(POPULATION, HIDDEN, CLASSES)) * 3.0, jnp.float32),
        output_bias=jnp.asarray(rng.normal(size=(POPULATION, CLASSES)), jnp.float32),
    )
    masks = rng.random((POPULATION, FEATURES)) < 0.6
    masks[0] = False  # the empty mask: every sample gets the bias-only logits
    masks[1] = True
    features = rng.normal(size=(NUM_IND, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, NUM_IND)
    ood_features = (rng.normal(size=(NUM_OOD, FEATURES)) * 1.5).astype(np.float32)
    return params, jnp.asarray(masks), jnp.asarray(features), jnp.asarray(labels), jnp.asarray(ood_features)


def _config(temperature=1000.0, epsilon=0.0, auroc="exact", memory_budget_mb=2048.0):
    return cfg.preset("quick").replace(
        ood={"temperature": temperature, "epsilon": epsilon, "auroc": auroc},
        engine={"memory_budget_mb": memory_budget_mb},
    )


def _head(params, index):
    return jax.tree.map(lambda leaf: leaf[index], params)


def _float64_max_softmax(logits, temperature):
    scaled = np.asarray(logits, np.float64) / temperature
    exps = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return (exps / exps.sum(axis=1, keepdims=True)).max(axis=1)


@jax.jit
def _paper_auroc_of_logits(ind_logits, ood_logits):
    return metrics.auroc_paper(odin.odin_score(ind_logits, 1000.0), odin.odin_score(ood_logits, 1000.0))


def test_matches_a_per_head_loop_with_sklearn(problem):
    params, masks, features, labels, ood_features = problem
    got = evaluate.evaluate_population(params, masks, features, labels, ood_features, _config())
    for field in FIELDS:
        assert getattr(got, field).shape == (POPULATION,) and getattr(got, field).dtype == jnp.float32
    apply = jax.jit(head.apply)
    y = np.r_[np.ones(NUM_IND), np.zeros(NUM_OOD)]
    for p in range(POPULATION):
        one = _head(params, p)
        ind_logits = np.asarray(apply(one, masks[p], features))
        ood_logits = np.asarray(apply(one, masks[p], ood_features))
        scores = np.r_[_float64_max_softmax(ind_logits, 1000.0), _float64_max_softmax(ood_logits, 1000.0)]
        fprs, tprs, _ = roc_curve(y, scores, drop_intermediate=False)
        expected = {
            "accuracy": np.mean(np.argmax(ind_logits, axis=1) == np.asarray(labels)),
            "mem": np.mean(np.asarray(masks[p])),
            "auroc": roc_auc_score(y, scores),
            "fpr95": fprs[np.argmax(tprs >= 0.95)],
            "aupr_in": average_precision_score(y, scores),
            "aupr_out": average_precision_score(1 - y, -scores),
            # metrics.auroc_paper itself is checked against the authors' loop in test_metrics.
            "auroc_paper": float(_paper_auroc_of_logits(ind_logits, ood_logits)),
        }
        for field, value in expected.items():
            assert float(getattr(got, field)[p]) == pytest.approx(value, abs=1e-6), (p, field)
    # The empty mask sees nothing: every score ties, so the exact AUROC is chance.
    assert float(got.auroc[0]) == 0.5 and float(got.mem[0]) == 0.0 and float(got.mem[1]) == 1.0


# Each chunk size compiles anew, so only distinct paths: 2 leaves a remainder
# (chunks start at 0, 2, 3), 100 > P is the plain vmap.
@pytest.mark.parametrize("chunk_size", [2, 100])
def test_chunking_does_not_change_results(problem, chunk_size):
    whole = evaluate.evaluate_population(*problem, _config(), chunk_size=POPULATION)
    chunked = evaluate.evaluate_population(*problem, _config(), chunk_size=chunk_size)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(chunked, field), getattr(whole, field), atol=1e-6, err_msg=field)


def test_automatic_chunk_follows_the_memory_budget(problem):
    per_head = memory.scoring_bytes(NUM_IND + NUM_OOD, FEATURES, HIDDEN, CLASSES, perturb=False)
    assert evaluate.auto_chunk_size(90, 16, 8, 3, perturb=False, memory_budget_mb=per_head * 2.5 / 2**20) == 2
    assert evaluate.auto_chunk_size(744, 2048, 512, 3, perturb=True, memory_budget_mb=1e-3) == 1
    # RPS shapes, the default 2 GB budget: roughly 2 GB / 14 MB heads per chunk.
    assert 100 <= evaluate.auto_chunk_size(744, 2048, 512, 3, perturb=False, memory_budget_mb=2048) <= 200
    tight = _config(memory_budget_mb=per_head * 2.5 / 2**20)
    whole = evaluate.evaluate_population(*problem, _config(), chunk_size=POPULATION)
    automatic = evaluate.evaluate_population(*problem, tight)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(automatic, field), getattr(whole, field), atol=1e-6, err_msg=field)


def test_chunk_starts_cover_every_head_once_the_last_chunk_moved_back():
    np.testing.assert_array_equal(evaluate.chunk_starts(10, 4), [0, 4, 6])
    np.testing.assert_array_equal(evaluate.chunk_starts(8, 4), [0, 4])
    np.testing.assert_array_equal(evaluate.chunk_starts(5, 1), [0, 1, 2, 3, 4])


def test_objectives(problem):
    got = evaluate.evaluate_population(*problem, _config())
    exact = got.objectives("exact")
    assert exact.shape == (POPULATION, 3)
    np.testing.assert_allclose(exact[:, 0], 1 - np.asarray(got.accuracy))
    np.testing.assert_allclose(exact[:, 1], np.asarray(got.mem))
    np.testing.assert_allclose(exact[:, 2], 1 - np.asarray(got.auroc))
    paper = np.asarray(got.objectives("paper"))
    np.testing.assert_allclose(paper[:, 2], 1 - np.asarray(got.auroc_paper))
    np.testing.assert_allclose(paper[:, :2], exact[:, :2])
    with pytest.raises(ValueError, match="auroc_kind"):
        got.objectives("trapezoid")
    diverged = np.arange(POPULATION) == 1  # the one definition: a diverged head at the reference point
    np.testing.assert_array_equal(got.objectives("exact", diverged)[1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got.objectives("exact", diverged)[~diverged], exact[~diverged])


def test_temperature_comes_from_the_config(problem):
    hot = evaluate.evaluate_population(*problem, _config(temperature=1000.0))
    cold = evaluate.evaluate_population(*problem, _config(temperature=1.0))
    np.testing.assert_array_equal(hot.accuracy, cold.accuracy)
    assert not np.allclose(hot.auroc, cold.auroc)


def test_feature_perturbation_scores_perturbed_logits_but_keeps_accuracy(problem):
    params, masks, features, _, ood_features = problem
    epsilon = 0.05
    plain = evaluate.evaluate_population(*problem, _config())
    perturbed = evaluate.evaluate_population(*problem, _config(epsilon=epsilon))
    np.testing.assert_array_equal(perturbed.accuracy, plain.accuracy)
    assert not np.allclose(perturbed.auroc, plain.auroc)

    @jax.jit
    def reference_auroc(one, mask):
        logit_fn = lambda x: head.apply(one, mask, x)
        scores = [odin.odin_score(logit_fn(odin.odin_perturb(logit_fn, x, epsilon, 1000.0)), 1000.0)
                  for x in (features, ood_features)]
        return metrics.auroc(*scores)

    for p in range(POPULATION):
        expected = float(reference_auroc(_head(params, p), masks[p]))
        assert float(perturbed.auroc[p]) == pytest.approx(expected, abs=1e-6)


def test_shape_errors_name_the_array(problem):
    params, masks, features, labels, ood_features = problem
    config = _config()
    with pytest.raises(ValueError, match="masks"):
        evaluate.evaluate_population(params, masks[0], features, labels, ood_features, config)
    with pytest.raises(ValueError, match="hidden_kernel"):
        evaluate.evaluate_population(params, masks[:3], features, labels, ood_features, config)
    with pytest.raises(ValueError, match="ood_features"):
        evaluate.evaluate_population(params, masks, features, labels, ood_features[:, :4], config)
    with pytest.raises(ValueError, match="labels"):
        evaluate.evaluate_population(params, masks, features, labels[:-1], ood_features, config)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate.evaluate_population(params, masks, features, labels, ood_features, config, chunk_size=0)
