"""The pruned head: masked D -> H ReLU units (no bias) -> C logits (with bias).

A mask bit of 0 removes every connection from that input feature into the hidden
layer (the bit is repeated across the H units, docs/PROTOCOL.md "Network"). Applying
the mask to the input is the same thing and costs one multiply per feature: the
pruned rows of the first kernel then receive no gradient and never matter.

Reference: Poyatos et al., MO-EvoPruneDeepTL, arXiv 2302.10253.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class HeadParams:
    """Parameters of one head, or of P heads stacked on a leading axis.

    Attributes:
      hidden_kernel: (D, H) float32, or (P, D, H).
      output_kernel: (H, C) float32, or (P, H, C).
      output_bias: (C,) float32, or (P, C).
    """

    hidden_kernel: jax.Array
    output_kernel: jax.Array
    output_bias: jax.Array


def param_bytes(num_features: int, num_classes: int, hidden: int = 512) -> int:
    """Bytes of one head's float32 parameters: D*H + H*C + C floats."""
    return 4 * (num_features * hidden + hidden * num_classes + num_classes)


def init(key: jax.Array, num_features: int, num_classes: int, hidden: int = 512) -> HeadParams:
    """Keras' defaults for ``Dense``: Glorot-uniform kernels, zero bias."""
    hidden_key, output_key = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    return HeadParams(
        hidden_kernel=glorot(hidden_key, (num_features, hidden), jnp.float32),
        output_kernel=glorot(output_key, (hidden, num_classes), jnp.float32),
        output_bias=jnp.zeros((num_classes,), jnp.float32),
    )


def last_hidden(params: HeadParams, mask: jax.Array, x: jax.Array) -> jax.Array:
    """Post-ReLU activations of one head's last hidden layer (the only one today).

    The seam between the hidden layers and the output layer: ``apply`` is
    ``output`` on it, and the Mahalanobis OoD score (score/mahalanobis.py)
    reads it. A deeper head changes this function alone.

    Args:
      params: one head's parameters.
      mask: (D,) bool, the features this head keeps.
      x: (N, D) float features.

    Returns:
      (N, H) float32 activations, >= 0.
    """
    return jax.nn.relu((x * mask.astype(x.dtype)) @ params.hidden_kernel)


def output(params: HeadParams, hidden: jax.Array) -> jax.Array:
    """The output layer: (N, H) last hidden activations -> (N, C) float32 logits."""
    return hidden @ params.output_kernel + params.output_bias


def apply(params: HeadParams, mask: jax.Array, x: jax.Array) -> jax.Array:
    """Logits of one head: ``output(params, last_hidden(params, mask, x))``.

    Args:
      params: one head's parameters.
      mask: (D,) bool, the features this head keeps. All zeros is allowed: the
        head then sees no features and predicts from its output bias alone.
      x: (N, D) float features.

    Returns:
      (N, C) float32 logits.
    """
    return output(params, last_hidden(params, mask, x))


def apply_population(params: HeadParams, masks: jax.Array, x: jax.Array) -> jax.Array:
    """Logits of P heads on shared inputs: params stacked (P, ...), masks (P, D), x (N, D) -> (P, N, C)."""
    return jax.vmap(apply, in_axes=(0, 0, None))(params, masks, x)
