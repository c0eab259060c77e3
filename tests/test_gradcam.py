"""Grad-CAM: against a direct jax.grad through backbone and head, pruned features, batch invariance."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune import head
from evojax_prune.analysis import gradcam

SIZE = 64  # a 2x2 feature map
NUM_CLASSES = 3
HIDDEN = 8
K = 2048

needs_keras = pytest.mark.skipif(
    importlib.util.find_spec("keras") is None, reason="the features extra is not installed"
)


def stacked_heads(seed: int, members: int):
    keys = jax.random.split(jax.random.PRNGKey(seed), members)
    return jax.vmap(lambda key: head.init(key, K, NUM_CLASSES, HIDDEN))(keys)


def random_masks(seed: int, members: int) -> np.ndarray:
    masks = np.random.default_rng(seed).random((members, K)) < 0.4
    masks[0] = True  # the all-ones head
    return masks


@jax.jit
def _direct_one_image(params, mask, feature_maps, image, target):
    logit = lambda maps: head.apply(params, mask, jnp.mean(maps, axis=(1, 2)))[image, target]
    grad = jax.grad(logit)(feature_maps)[image]  # (h, w, K)
    alpha = jnp.mean(grad, axis=(0, 1))
    return jax.nn.relu(jnp.einsum("hwk,k->hw", feature_maps[image], alpha))


def direct_gradcam(params, mask, feature_maps, targets):
    """Grad-CAM by the book: alpha = position mean of d logit / d A, map = ReLU(sum_k alpha_k A_k)."""
    return np.stack([_direct_one_image(params, mask, feature_maps, image, int(target))
                     for image, target in enumerate(np.asarray(targets))])


def test_maps_match_direct_gradient_on_feature_maps():
    rng = np.random.default_rng(0)
    feature_maps = jnp.asarray(rng.random((3, 2, 2, K)) * 2.0, jnp.float32)
    params, masks = stacked_heads(1, 3), jnp.asarray(random_masks(2, 3))
    labels = jnp.asarray([0, 2, 1])
    for target in gradcam.TARGET_MODES:
        out = gradcam.explain_feature_maps(params, masks, feature_maps, labels, SIZE, target)
        assert out["maps"].shape == (3, 3, SIZE, SIZE)
        for member in range(3):
            one = jax.tree.map(lambda leaf, m=member: leaf[m], params)
            expected = direct_gradcam(one, masks[member], feature_maps, out["targets"][member])
            np.testing.assert_allclose(out["coarse_maps"][member], expected, rtol=1e-4, atol=1e-6)
            assert np.abs(expected).max() > 0  # the comparison is not between zeros
    logits = jax.vmap(head.apply, in_axes=(0, 0, None))(params, masks, feature_maps.mean(axis=(1, 2)))
    predicted = gradcam.explain_feature_maps(params, masks, feature_maps, labels, SIZE, "predicted")
    np.testing.assert_array_equal(predicted["targets"], np.argmax(logits, axis=-1))


def test_pruned_features_contribute_nothing():
    rng = np.random.default_rng(3)
    feature_maps = rng.random((2, 2, 2, K)).astype(np.float32)
    params, masks = stacked_heads(4, 2), random_masks(5, 2)
    masks[1, :] = False
    masks[1, :300] = True
    labels = jnp.asarray([1, 0])

    def maps(a):
        out = gradcam.explain_feature_maps(params, jnp.asarray(masks), jnp.asarray(a), labels, SIZE)
        return np.asarray(out["coarse_maps"][1]), np.asarray(out["feature_gradients"][1])

    reference, gradients = maps(feature_maps)
    assert np.all(gradients[:, ~masks[1]] == 0)
    assert np.any(gradients[:, masks[1]] != 0)
    perturbed = feature_maps.copy()
    perturbed[..., ~masks[1]] += rng.normal(0, 5.0, perturbed[..., ~masks[1]].shape).astype(np.float32)
    np.testing.assert_array_equal(maps(perturbed)[0], reference)
    # Kept channels do move the map: the test above can fail.
    kept = feature_maps.copy()
    kept[..., masks[1]] += rng.normal(0, 5.0, kept[..., masks[1]].shape).astype(np.float32)
    assert not np.allclose(maps(kept)[0], reference)


def test_top_features_lists_kept_features_by_mean_importance():
    importance = np.array([[0.0, 3.0, 1.0, 9.0], [0.0, 1.0, 3.0, 9.0]])
    mask = np.array([True, True, True, False])
    top = gradcam.top_features(importance, mask, count=2)
    assert [row["feature"] for row in top] == [1, 2]  # feature 3 is pruned, not listed
    assert top[0]["mean_importance"] == pytest.approx(2.0)
    assert top[0]["share"] == pytest.approx(2.0 / 13.0)
    assert [row["feature"] for row in gradcam.top_features(importance, mask, count=5)] == [1, 2]  # not 0
    assert gradcam.top_features(np.zeros((2, 4)), mask) == []


def test_overlay_and_normalise():
    heat = np.zeros((4, 4))
    heat[0, 0] = 2.0
    scaled = gradcam.normalise_map(heat)
    assert scaled.max() == 1.0 and scaled.min() == 0.0
    assert np.all(gradcam.normalise_map(np.zeros((4, 4))) == 0)
    image = np.full((4, 4, 3), 100, np.uint8)
    blended = gradcam.overlay(image, scaled)
    assert blended.dtype == np.uint8 and blended.shape == (4, 4, 3)
    assert not np.array_equal(blended[0, 0], blended[3, 3])


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="target"):
        gradcam.choose_targets(jnp.zeros((1, 2)), jnp.zeros(1), "largest")


# --------------------------------------------------------------------------- through the backbone


@pytest.fixture(scope="module")
def model():
    if importlib.util.find_spec("keras") is None:
        pytest.skip("the features extra is not installed")
    from evojax_prune.data import backbone

    return backbone.build_resnet50(SIZE, None)


@pytest.fixture(scope="module")
def explainer(model):
    return gradcam.GradCam(model, batch_size=3)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


@needs_keras
def test_gradcam_matches_direct_gradient_through_backbone_and_head(model, explainer):
    from evojax_prune.data import backbone

    pictures, labels = images(3), np.array([0, 1, 2])
    params, masks = stacked_heads(6, 2), random_masks(7, 2)
    out = explainer(pictures, labels, params, masks)
    assert out.maps.shape == (2, 3, SIZE, SIZE) and out.coarse_maps.shape == (2, 3, 2, 2)
    # The feature maps straight from the Keras model (not jitted), and Grad-CAM by the book.
    feature_maps = jnp.asarray(explainer.feature_maps(backbone.preprocess(pictures)))
    assert feature_maps.shape == (3, 2, 2, K)
    # Their average is the feature vector the extractor gives the head.
    pooled = backbone.FeatureExtractor(model, batch_size=3, weights=None)(pictures)
    np.testing.assert_allclose(out.features, pooled, rtol=1e-4, atol=1e-5)
    for member in range(2):
        one = jax.tree.map(lambda leaf, m=member: leaf[m], params)
        expected = direct_gradcam(one, jnp.asarray(masks[member]), feature_maps, labels)
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(out.coarse_maps[member], expected, rtol=1e-3, atol=1e-4 * scale)
        upsampled = jax.image.resize(jnp.asarray(expected), (3, SIZE, SIZE), "bilinear")
        np.testing.assert_allclose(out.maps[member], upsampled, rtol=1e-3, atol=1e-4 * scale)
    assert np.all(out.importance[1][:, ~masks[1]] == 0)


@needs_keras
def test_batch_invariance(model, explainer):
    pictures, labels = images(3, seed=1), np.array([2, 0, 1])
    params, masks = stacked_heads(8, 2), random_masks(9, 2)
    one_by_one = gradcam.GradCam(model, batch_size=1)(pictures, labels, params, masks, target="predicted")
    all_three = explainer(pictures, labels, params, masks, target="predicted")  # batch size 3
    assert one_by_one.maps.max() > 0
    np.testing.assert_array_equal(all_three.targets, one_by_one.targets)
    np.testing.assert_allclose(all_three.maps, one_by_one.maps, rtol=1e-4, atol=1e-5 * one_by_one.maps.max())
    np.testing.assert_allclose(all_three.feature_gradients, one_by_one.feature_gradients,
                               rtol=1e-4, atol=1e-7)
    padded = gradcam.GradCam(model, batch_size=2)(pictures[:1], labels[:1], params, masks, target="predicted")
    np.testing.assert_allclose(padded.maps, one_by_one.maps[:, :1], rtol=1e-4,
                               atol=1e-5 * one_by_one.maps.max())
