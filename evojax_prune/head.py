"""The pruned head: D features -> one or two dense ReLU layers (no bias) -> C logits (with bias).

The chromosome is a binary mask over the units one pruning target holds
(``HeadConfig.prune``): the D input features (MO-EvoPruneDeepTL), the neurons
of the first or the second hidden layer, or of both (EvoPruneDeepTL's FC1 /
FC2 pruning). A 0 removes the unit with every connection it has: for a
feature, its row of the first kernel (the bit is repeated across the H units,
docs/PROTOCOL.md "Network"); for a neuron, its incoming column and its outgoing
row. Masking the unit's value (the input feature, or the neuron's activation)
is the same thing and costs one multiply per unit: the removed weights then
receive no gradient and never matter.

Reference: Poyatos et al., MO-EvoPruneDeepTL, arXiv 2302.10253; EvoPruneDeepTL,
arXiv 2202.03844.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evojax_prune.config import PruneTarget

# What the bits of a chromosome stand for, by ``HeadConfig.prune`` (for messages and reports).
UNIT_NAMES: dict[PruneTarget, str] = {"features": "features", "hidden1": "first-layer neurons",
                                      "hidden2": "second-layer neurons", "both": "hidden neurons"}


@struct.dataclass
class HeadParams:
    """Parameters of one head, or of P heads stacked on a leading axis.

    Attributes:
      hidden_kernel: (D, H) float32, or (P, D, H): the first hidden layer.
      output_kernel: (H, C) float32, or (P, H, C).
      output_bias: (C,) float32, or (P, C).
      second_kernel: (H, H) float32, or (P, H, H): the second hidden layer;
        None for a head of one hidden layer.
    """

    hidden_kernel: jax.Array
    output_kernel: jax.Array
    output_bias: jax.Array
    second_kernel: jax.Array | None = None



def param_bytes(num_features: int, num_classes: int, hidden: int = 512, hidden_layers: int = 1) -> int:
    """Bytes of one head's float32 parameters: D*H + (layers - 1)*H*H + H*C + C floats."""
    return 4 * (num_features * hidden + (hidden_layers - 1) * hidden * hidden + hidden * num_classes
                + num_classes)


def init(key: jax.Array, num_features: int, num_classes: int, hidden: int = 512,
         hidden_layers: int = 1) -> HeadParams:
    """Keras' defaults for ``Dense``: Glorot-uniform kernels, zero bias.

    The second layer's key is drawn apart, so that a head of one hidden layer
    starts from the same weights whatever ``hidden_layers`` code exists.
    """
    hidden_key, output_key = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    second = None
    if hidden_layers == 2:
        second = glorot(jax.random.fold_in(key, 2), (hidden, hidden), jnp.float32)
    return HeadParams(
        hidden_kernel=glorot(hidden_key, (num_features, hidden), jnp.float32),
        output_kernel=glorot(output_key, (hidden, num_classes), jnp.float32),
        output_bias=jnp.zeros((num_classes,), jnp.float32),
        second_kernel=second,
    )


def unit_masks(mask: jax.Array, prune: PruneTarget, hidden: int
               ) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None]:
    """A chromosome split by the units it prunes: (features, first layer, second layer).

    Args:
      mask: (..., L) chromosome; L = D for ``"features"``, H for
        ``"hidden1"`` / ``"hidden2"``, 2H for ``"both"`` (first layer first).
      prune: ``HeadConfig.prune``.
      hidden: H.

    Returns:
      Three masks, (..., D), (..., H), (..., H), None where ``prune`` keeps
      every unit of that place.
    """
    if prune == "features":
        return mask, None, None
    if prune == "hidden1":
        return None, mask, None
    if prune == "hidden2":
        return None, None, mask
    return None, mask[..., :hidden], mask[..., hidden:]


def _masked(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    return values if mask is None else values * mask.astype(values.dtype)


def last_hidden(params: HeadParams, mask: jax.Array, x: jax.Array,
                prune: PruneTarget = "features") -> jax.Array:
    """Activations of the head's last hidden layer, pruned units at 0.

    Args:
      params: one head's parameters.
      mask: (L,) bool chromosome (``unit_masks``). All zeros is allowed: the
        head then predicts from its output bias alone.
      x: (N, D) float features.
      prune: what the chromosome prunes (``HeadConfig.prune``), static.

    Returns:
      (N, H) float32.
    """
    features_kept, first_kept, second_kept = unit_masks(mask, prune, params.output_kernel.shape[0])
    hidden = _masked(jax.nn.relu(_masked(x, features_kept) @ params.hidden_kernel), first_kept)
    if params.second_kernel is not None:
        hidden = _masked(jax.nn.relu(hidden @ params.second_kernel), second_kept)
    return hidden


def output(params: HeadParams, hidden: jax.Array) -> jax.Array:
    """The output layer: (N, H) last hidden activations (``last_hidden``) -> (N, C) float32 logits."""
    return hidden @ params.output_kernel + params.output_bias


def apply(params: HeadParams, mask: jax.Array, x: jax.Array, prune: PruneTarget = "features") -> jax.Array:
    """Logits of one head: (N, D) features -> (N, C) float32, ``output`` on ``last_hidden``."""
    return output(params, last_hidden(params, mask, x, prune))


def apply_population(params: HeadParams, masks: jax.Array, x: jax.Array,
                     prune: PruneTarget = "features") -> jax.Array:
    """Logits of P heads on shared inputs: params stacked (P, ...), masks (P, L), x (N, D) -> (P, N, C)."""
    return jax.vmap(lambda p, m: apply(p, m, x, prune))(params, masks)


@struct.dataclass
class CompactHead:
    """One pruned head holding only its kept units: what a deployment needs.

    Attributes:
      feature_indices: (k,) int, the kept input features, increasing, in [0, D).
      hidden_kernel: (k, h1) float32, the first layer over the kept features and its kept neurons.
      output_kernel: (h, C) float32 over the last layer's kept neurons; output_bias: (C,).
      second_kernel: (h1, h2) float32, or None for a head of one hidden layer.
      num_features: D, the width of the features the head reads.

    ``logits(x)`` equals ``apply(params, mask, x, prune)`` of the head it was
    cut from (``compact``), up to float32 summation order: the units removed
    there only ever contributed zeros.
    """

    feature_indices: jax.Array
    hidden_kernel: jax.Array
    output_kernel: jax.Array
    output_bias: jax.Array
    second_kernel: jax.Array | None = None
    num_features: int = struct.field(pytree_node=False, default=0)

    def logits(self, x: jax.Array) -> jax.Array:
        """(N, D) features -> (N, C) float32 logits."""
        hidden = jax.nn.relu(jnp.take(x, self.feature_indices, axis=1) @ self.hidden_kernel)
        if self.second_kernel is not None:
            hidden = jax.nn.relu(hidden @ self.second_kernel)
        return hidden @ self.output_kernel + self.output_bias

    @property
    def num_parameters(self) -> int:
        """The weights it holds (kernels and bias)."""
        kernels = (self.hidden_kernel, self.output_kernel, self.output_bias, self.second_kernel)
        return sum(int(kernel.size) for kernel in kernels if kernel is not None)


def compact(params: HeadParams, mask, prune: PruneTarget = "features") -> CompactHead:
    """The head ``params`` with chromosome ``mask`` cut down to its kept units (host numpy).

    Args:
      params: one head's parameters (numpy or jax arrays, no leading axis).
      mask: (L,) bool chromosome (``unit_masks``).
      prune: ``HeadConfig.prune``.
    """
    hidden = params.output_kernel.shape[0]
    features_kept, first_kept, second_kept = unit_masks(np.asarray(mask, bool), prune, hidden)
    num_features = params.hidden_kernel.shape[0]
    every = lambda size: np.ones(size, bool)
    features_kept = every(num_features) if features_kept is None else features_kept
    first_kept = every(hidden) if first_kept is None else first_kept
    kernel = np.asarray(params.hidden_kernel)[features_kept][:, first_kept]
    last_kept, second = first_kept, None
    if params.second_kernel is not None:
        second_kept = every(hidden) if second_kept is None else second_kept
        second = np.asarray(params.second_kernel)[first_kept][:, second_kept]
        last_kept = second_kept
    return CompactHead(
        feature_indices=np.flatnonzero(features_kept).astype(np.int32),
        hidden_kernel=kernel.astype(np.float32),
        output_kernel=np.asarray(params.output_kernel)[last_kept].astype(np.float32),
        output_bias=np.asarray(params.output_bias).astype(np.float32),
        second_kernel=None if second is None else second.astype(np.float32),
        num_features=int(num_features),
    )
