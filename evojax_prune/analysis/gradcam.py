"""Grad-CAM (Selvaraju et al. 2017) for pruned heads on the frozen ResNet-50.

The backbone's last convolutional feature map ``A`` ((B, h, w, K), K = 2048:
Keras' ResNet50 without its average pooling) is averaged over positions into
the feature vector ``f = mean_ij A_ij`` that the head saw. For a class logit
``y_c`` of a masked head, Grad-CAM's channel weights are

    alpha_k = mean_ij d y_c / d A_ijk = (d y_c / d f_k) / (h * w),

since ``d f_k / d A_ijk = 1 / (h * w)``; the map is ``ReLU(sum_k alpha_k A_k)``
(h, w), upsampled to the image size.

Pruned features have zero weight by construction: the head multiplies its input
by the mask (``head.apply``), so ``d y_c / d f_k = 0`` for a pruned ``k`` and
that channel adds nothing to the map, whatever its activations.

Everything is batched and jitted: one backbone pass per image batch, its feature
maps shared by all heads (``jax.vmap`` over the stacked heads).

The "importance" of a feature for one image and head is ``|g_k * f_k|``
(gradient times input, ``g = d y_c / d f``): how much of the logit the feature
carries to first order. Pruned features have importance 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune import head

TARGET_MODES = ("label", "predicted")


@dataclasses.dataclass(frozen=True)
class HeadExplanation:
    """Grad-CAM of M heads on B images (numpy arrays).

    Attributes:
      maps: (M, B, S, S) float32, Grad-CAM upsampled to the image size, >= 0, unnormalised.
      coarse_maps: (M, B, h, w) float32, at the feature map's resolution.
      targets: (M, B) int32, the class each map explains.
      logits: (M, B, C) float32, the heads' logits.
      feature_gradients: (M, B, K) float32, d logit[target] / d pooled feature (0 where pruned).
      features: (B, K) float32, the pooled features (the head's input before masking).
    """

    maps: np.ndarray
    coarse_maps: np.ndarray
    targets: np.ndarray
    logits: np.ndarray
    feature_gradients: np.ndarray
    features: np.ndarray

    @property
    def importance(self) -> np.ndarray:
        """(M, B, K) float32: |gradient x feature| per head, image and feature."""
        return np.abs(self.feature_gradients * self.features[None])


# --------------------------------------------------------------------------- pure functions


def pooled_features(feature_maps: jax.Array) -> jax.Array:
    """(B, h, w, K) -> (B, K): global average over positions, the head's input."""
    return jnp.mean(feature_maps, axis=(1, 2))


def choose_targets(logits: jax.Array, labels: jax.Array, target: str) -> jax.Array:
    """(B, C) logits, (B,) labels -> (B,) int32 classes to explain: the labels or the predictions."""
    if target == "label":
        return labels.astype(jnp.int32)
    if target == "predicted":
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")


def head_feature_gradients(params: head.HeadParams, mask: jax.Array, features: jax.Array,
                           labels: jax.Array, target: str = "label"):
    """One head's logits, targets and d logit[target] / d features.

    Args:
      params: one head's parameters.
      mask: (K,) bool, the kept features.
      features: (B, K) pooled features.
      labels: (B,) int, the true classes (used when ``target == "label"``).
      target: ``"label"`` or ``"predicted"``.

    Returns:
      (logits (B, C), targets (B,) int32, gradients (B, K)); the gradient of
      image b involves only image b (each logit depends on its own row), and is
      exactly 0 for every pruned feature.
    """
    logits = head.apply(params, mask, features)
    targets = choose_targets(logits, labels, target)

    def chosen_logits_sum(x):
        chosen = jnp.take_along_axis(head.apply(params, mask, x), targets[:, None], axis=1)
        return jnp.sum(chosen)

    return logits, targets, jax.grad(chosen_logits_sum)(features)


def gradcam_from_gradients(feature_maps: jax.Array, feature_gradients: jax.Array) -> jax.Array:
    """Grad-CAM maps from the feature maps and the gradients wrt the pooled features.

    Args:
      feature_maps: (B, h, w, K) activations ``A``.
      feature_gradients: (B, K) ``g = d y / d f`` with ``f = mean_ij A_ij``.

    Returns:
      (B, h, w) ``ReLU(sum_k alpha_k A_k)`` with ``alpha = g / (h * w)`` (Grad-CAM's
      position-averaged gradient wrt ``A``).
    """
    positions = feature_maps.shape[1] * feature_maps.shape[2]
    alpha = feature_gradients / positions
    return jax.nn.relu(jnp.einsum("bhwk,bk->bhw", feature_maps, alpha))


def upsample(maps: jax.Array, image_size: int) -> jax.Array:
    """(..., h, w) -> (..., S, S), bilinear (``jax.image.resize``)."""
    shape = (*maps.shape[:-2], image_size, image_size)
    return jax.image.resize(maps, shape, method="bilinear")


def explain_feature_maps(params: head.HeadParams, masks: jax.Array, feature_maps: jax.Array,
                         labels: jax.Array, image_size: int, target: str = "label") -> dict[str, jax.Array]:
    """Grad-CAM of M stacked heads on shared feature maps (pure; jit it with static size/target).

    Args:
      params: M heads stacked on a leading axis (``hidden_kernel`` (M, K, H), ...).
      masks: (M, K) bool.
      feature_maps: (B, h, w, K), shared by all heads.
      labels: (B,) int.
      image_size: S, the side the maps are upsampled to.
      target: ``"label"`` or ``"predicted"``.

    Returns:
      dict of ``maps`` (M, B, S, S), ``coarse_maps`` (M, B, h, w), ``targets`` (M, B),
      ``logits`` (M, B, C), ``feature_gradients`` (M, B, K), ``features`` (B, K).
    """
    features = pooled_features(feature_maps)

    def one_head(member_params, mask):
        logits, targets, gradients = head_feature_gradients(member_params, mask, features, labels, target)
        coarse = gradcam_from_gradients(feature_maps, gradients)
        return logits, targets, gradients, coarse

    logits, targets, gradients, coarse = jax.vmap(one_head)(params, masks)
    return {"maps": upsample(coarse, image_size), "coarse_maps": coarse, "targets": targets,
            "logits": logits, "feature_gradients": gradients, "features": features}


# --------------------------------------------------------------------------- the backbone


def feature_map_model(model):
    """The Keras sub-model of ``model`` (``build_resnet50``) that stops before its global pooling.

    Args:
      model: a ``keras.Model`` whose last layer is a global average pooling.

    Returns:
      A ``keras.Model`` sharing ``model``'s variables: (N, S, S, 3) preprocessed
      images -> (N, h, w, 2048) feature maps (h = w = S / 32 rounded up).
    """
    from evojax_prune.io.keras_backend import import_keras

    keras = import_keras()
    pooling = model.layers[-1]
    if not isinstance(pooling, keras.layers.GlobalAveragePooling2D):
        raise ValueError(
            "expected a backbone ending in global average pooling, its last layer is "
            f"{type(pooling).__name__}"
        )
    return keras.Model(model.inputs[0], pooling.input, name=f"{model.name}_feature_maps")


class GradCam:
    """Grad-CAM of stacked heads on a frozen Keras backbone, jitted per image batch.

    Every batch is padded to ``batch_size`` images, so a call compiles once per
    (heads, target) shape; maps do not depend on the batch size
    (inference-mode batch normalisation, per-image gradients).

    Attributes:
      feature_model: the backbone up to its last convolutional feature map.
      image_size: S.
      batch_size: images per compiled call.
    """

    def __init__(self, model, batch_size: int = 8):
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.feature_model = feature_map_model(model)
        self.image_size = int(model.input_shape[1])
        self.batch_size = int(batch_size)
        feature_model = self.feature_model

        def forward(trainable, non_trainable, images, params, masks, labels, target):
            feature_maps, _ = feature_model.stateless_call(trainable, non_trainable, images, training=False)
            return explain_feature_maps(params, masks, feature_maps, labels, self.image_size, target)

        self._forward = jax.jit(forward, static_argnames=("target",))

    def feature_maps(self, preprocessed: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) preprocessed images -> (N, h, w, 2048) float32 (not jitted; for checks)."""
        return np.asarray(self.feature_model(np.asarray(preprocessed, np.float32), training=False))

    def __call__(self, images: np.ndarray, labels: np.ndarray, params: head.HeadParams,
                 masks: np.ndarray, target: str = "label",
                 on_batch: Callable[[int, int], None] | None = None) -> HeadExplanation:
        """Grad-CAM of M heads on N images.

        Args:
          images: (N, S, S, 3) RGB in 0..255 (or anything whose slices are).
          labels: (N,) int true classes.
          params: M heads stacked on a leading axis.
          masks: (M, K) bool.
          target: explain each image's ``"label"`` or each head's ``"predicted"`` class.
          on_batch: called as ``on_batch(done, N)`` after each batch.

        Returns:
          HeadExplanation with M heads and N images.
        """
        from evojax_prune.data.backbone import preprocess

        if target not in TARGET_MODES:
            raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")
        total = len(images)
        labels = np.asarray(labels, np.int32)
        if labels.shape != (total,):
            raise ValueError(f"expected {total} labels, got an array of shape {labels.shape}")
        masks = jnp.asarray(np.asarray(masks, bool))
        params = jax.tree.map(jnp.asarray, params)
        trainable = [variable.value for variable in self.feature_model.trainable_variables]
        non_trainable = [variable.value for variable in self.feature_model.non_trainable_variables]
        side = self.image_size
        parts = []
        for start in range(0, total, self.batch_size):
            batch = np.asarray(images[start:start + self.batch_size])
            count = batch.shape[0]
            if batch.shape[1:] != (side, side, 3):
                raise ValueError(
                    f"images must have shape (N, {side}, {side}, 3), found a batch of shape {batch.shape}"
                )
            padded = np.zeros((self.batch_size, side, side, 3), np.float32)
            padded[:count] = preprocess(batch)
            padded_labels = np.zeros(self.batch_size, np.int32)
            padded_labels[:count] = labels[start:start + count]
            result = self._forward(trainable, non_trainable, padded, params, masks, padded_labels, target)
            parts.append(_unpad(jax.device_get(result), count))
            if on_batch is not None:
                on_batch(start + count, total)
        if not parts:
            raise ValueError("no images to explain")
        joined = {name: np.concatenate([part[name] for part in parts], axis=_image_axis(name))
                  for name in parts[0]}
        return HeadExplanation(**{name: np.asarray(value) for name, value in joined.items()})


def _image_axis(name: str) -> int:
    return 0 if name == "features" else 1


def _unpad(result: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {name: (value[:count] if _image_axis(name) == 0 else value[:, :count])
            for name, value in result.items()}


# --------------------------------------------------------------------------- summaries and drawing


def top_features(importance: np.ndarray, mask: np.ndarray, count: int = 10) -> list[dict[str, float]]:
    """The kept features of one head with the largest mean importance over images.

    Args:
      importance: (B, K) |gradient x feature| of one head.
      mask: (K,) bool, the head's kept features.
      count: how many to list.

    Returns:
      Up to ``count`` dicts ``{"feature": k, "mean_importance": ..., "share": ...}``,
      largest first, only features of nonzero importance (none when, on these
      images, the head's hidden units are inactive or its kept features zero); ``share`` is the feature's
      part of the head's total importance.
    """
    mean = np.asarray(importance, np.float64).mean(axis=0)
    kept = np.flatnonzero(np.asarray(mask, bool) & (mean > 0))
    order = kept[np.argsort(-mean[kept], kind="stable")][:count]
    total = float(mean.sum())
    return [{"feature": int(k), "mean_importance": float(mean[k]),
             "share": float(mean[k] / total) if total > 0 else 0.0} for k in order]


def normalise_map(heat: np.ndarray) -> np.ndarray:
    """(S, S) map -> [0, 1] by its own maximum (an all-zero map stays zero)."""
    peak = float(np.max(heat))
    return np.asarray(heat / peak if peak > 0 else np.zeros_like(heat), np.float32)


OVERLAY_COLORMAP = "jet"  # the heat maps' colours; explain's grids draw its colour scale


def overlay(image: np.ndarray, heat: np.ndarray, strength: float = 0.5,
            colormap: str = OVERLAY_COLORMAP) -> np.ndarray:
    """(S, S, 3) uint8 image and (S, S) map in [0, 1] -> (S, S, 3) uint8 blend with the coloured map."""
    from matplotlib import colormaps

    coloured = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - strength) * np.asarray(image, np.float32) + strength * coloured
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
