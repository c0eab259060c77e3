"""A chunk's heads on their kept neurons: hidden layers narrowed to the neurons a chromosome keeps.

A head whose chromosome prunes neurons (``HeadConfig.prune`` ``"hidden1"``,
``"hidden2"`` or ``"both"``) needs only its kept neurons' weights: for a kept
neuron of a layer, its column of the kernel into that layer and its row of
the kernel out of it. ``gather`` narrows each head's layers to those, padded to
the chunk's capacity c (``plan.chunk_layouts`` over H) with neurons whose
weights are zero: such a neuron's pre-activation is 0, so its ReLU output and
every gradient through it are 0 and its weights stay 0, as the pruned
neurons' would (a zero gradient never moves a weight under
``optimizer.ROW_SEPARABLE_OPTIMIZERS``). A chunk then trains a head of width c
instead of H: the first layer's product costs D * c per sample, not D * H.
``scatter`` puts the trained weights back into (K, D, H) / (K, H, H) / (K, H, C)
kernels, pruned neurons' weights at their initial values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evojax_prune import head


def kept_neurons(kept: jax.Array, capacity: int) -> jax.Array:
    """(K, H) bool -> (K, capacity) int32: each head's kept neurons in order, then H (padding).

    The masks must keep at most ``capacity`` neurons each.
    """
    width = kept.shape[1]
    order = jnp.argsort(~kept, axis=1, stable=True)[:, :capacity].astype(jnp.int32)
    return jnp.where(jnp.arange(capacity) < jnp.sum(kept, axis=1, keepdims=True), order, width)


def _padded(kernel: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``kernel`` with a zero row / column appended on each of ``axes`` (where padding indices point)."""
    return jnp.pad(kernel, [(0, 1) if axis in axes else (0, 0) for axis in range(kernel.ndim)])


def gather(init_params: head.HeadParams, first: jax.Array | None, second: jax.Array | None,
           num_heads: int) -> head.HeadParams:
    """The shared initial weights narrowed per head to its kept neurons: a leading K axis on every leaf.

    ``first`` / ``second``: (K, c) ``kept_neurons`` of the first / second
    hidden layer, or None where that layer keeps every neuron.
    """
    hidden = init_params.output_kernel.shape[0]
    every = jnp.broadcast_to(jnp.arange(hidden, dtype=jnp.int32), (num_heads, hidden))
    first_index = every if first is None else first
    last_index = first_index
    hidden_kernel = _padded(init_params.hidden_kernel, (1,))
    second_kernel = None
    if init_params.second_kernel is not None:
        second_index = every if second is None else second
        padded = _padded(init_params.second_kernel, (0, 1))
        second_kernel = jax.vmap(lambda rows, columns: padded[rows[:, None], columns[None, :]])(
            first_index, second_index)
        last_index = second_index
    output_kernel = _padded(init_params.output_kernel, (0,))
    return head.HeadParams(
        hidden_kernel=jnp.moveaxis(hidden_kernel[:, first_index], 0, 1),  # (K, D, c)
        output_kernel=output_kernel[last_index],
        output_bias=jnp.broadcast_to(init_params.output_bias, (num_heads, *init_params.output_bias.shape)),
        second_kernel=second_kernel,
    )


def scatter(trained: head.HeadParams, init_params: head.HeadParams, first: jax.Array | None,
            second: jax.Array | None) -> head.HeadParams:
    """Trained narrowed weights (``gather``'s layout) -> full kernels, pruned neurons at their initial values.

    Padding indices (H) fall outside the kernels and are dropped.
    """
    num_heads = trained.output_bias.shape[0]
    full = lambda leaf: jnp.broadcast_to(leaf, (num_heads, *leaf.shape))
    hidden = init_params.output_kernel.shape[0]
    every = jnp.broadcast_to(jnp.arange(hidden, dtype=jnp.int32), (num_heads, hidden))
    first_index = every if first is None else first
    set_columns = jax.vmap(lambda kernel, columns, values: kernel.at[:, columns].set(values, mode="drop"))
    set_rows = jax.vmap(lambda kernel, rows, values: kernel.at[rows].set(values, mode="drop"))
    last_index = first_index
    second_kernel = None
    if init_params.second_kernel is not None:
        second_index = every if second is None else second
        second_kernel = jax.vmap(
            lambda kernel, rows, columns, values: kernel.at[rows[:, None], columns[None, :]].set(
                values, mode="drop")
        )(full(init_params.second_kernel), first_index, second_index, trained.second_kernel)
        last_index = second_index
    return head.HeadParams(
        hidden_kernel=set_columns(full(init_params.hidden_kernel), first_index, trained.hidden_kernel),
        output_kernel=set_rows(full(init_params.output_kernel), last_index, trained.output_kernel),
        output_bias=trained.output_bias,
        second_kernel=second_kernel,
    )
