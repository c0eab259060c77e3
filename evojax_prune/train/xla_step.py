"""The XLA training step: a chunk's heads trained by optax, the backward pass written by hand.

A step module of the trainer (``trainer.STEPS``): ``init`` makes the step's
state from a chunk's training weights, ``epoch`` runs one pass over the
minibatches, ``params`` reads the weights back. The gradient is written out
(``population_loss_and_grads``) because ``jax.grad`` of a ``vmap`` left the
kernel gradient in a transposed layout that cost 4x on a CPU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from evojax_prune import head
from evojax_prune.config import TrainConfig
from evojax_prune.train.optimizer import make_optimizer
from evojax_prune.train.packing import Chunk
from evojax_prune.train.plan import TrainingPlan


def population_loss_and_grads(
    params: head.HeadParams,
    inputs: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    tile_head: jax.Array | None = None,
    sum_tiles: Any = None,
    kernel_transposed: bool = False,
) -> tuple[jax.Array, head.HeadParams]:
    """Softmax cross-entropy of K heads on one minibatch, and its gradients.

    The backward pass is written out rather than taken with ``jax.grad`` of a
    ``vmap``: autodiff there emits the kernel gradient as (K, H, c) followed by
    a transpose, which XLA on CPU fuses into the optimizer update as a strided
    read, four times slower per step (16 ms vs 4 ms for the paper's head).
    Here every product comes out in the layout its consumer reads.

    Args:
      params: K heads, hidden_kernel (K, c, H), output_kernel (K, H, C),
        output_bias (K, C), float32. With ``tile_head``, hidden_kernel is
        (T, r, H) instead: T tiles of r kept rows, packed across the heads.
      inputs: (K, B, c) float32, each head's first-layer input: the minibatch
        times the mask, or the kept columns of the minibatch; with
        ``tile_head``, (T, B, r), each tile's columns.
      labels: (B,) int32 class indices.
      weights: (B,) float32, 1 for a real sample and 0 for padding.
      tile_head: (T,) int32, sorted, the head each tile belongs to (K: an
        unused tile). A head's first layer is the sum of its tiles' products.
      sum_tiles: (T, B, H) -> (K, B, H), that sum; given with ``tile_head``.
      kernel_transposed: hidden_kernel is (K, H, c), and so is its gradient.

    Returns:
      loss: (K,) float32, sum(weights * cross-entropy) / sum(weights) per head.
      grads: ``HeadParams`` shaped like ``params``.
    """
    first_layer = "kbc,khc->kbh" if kernel_transposed else "kbc,kch->kbh"
    pre_activation = jnp.einsum(first_layer, inputs, params.hidden_kernel)
    if tile_head is not None:  # (T, B, H) partial products -> (K, B, H); unused tiles dropped
        pre_activation = sum_tiles(pre_activation)
    loss, d_pre_activation, output_grads = loss_and_backward(params, pre_activation, labels, weights)
    if tile_head is not None:  # each tile gets its head's gradient (unused tiles: zero inputs)
        d_pre_activation = jnp.take(d_pre_activation, tile_head, axis=0, mode="clip")
    if kernel_transposed:
        hidden_kernel_grad = jnp.einsum("kbh,kbc->khc", d_pre_activation, inputs)
    else:
        hidden_kernel_grad = jnp.einsum("kbc,kbh->kch", inputs, d_pre_activation)
    return loss, head.HeadParams(hidden_kernel_grad, *output_grads)


def loss_and_backward(
    params: head.HeadParams, pre_activation: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
    """The heads' loss from their first layer's (K, B, H) pre-activation, and the backward pass to it.

    Returns the (K,) loss, the (K, B, H) gradient with respect to the
    pre-activation, and the gradients of the output kernel (K, H, C) and
    bias (K, C).
    """
    hidden = jax.nn.relu(pre_activation)
    logits = jnp.einsum("kbh,khc->kbc", hidden, params.output_kernel) + params.output_bias[:, None, :]
    log_probs = jax.nn.log_softmax(logits)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    sample_weights = weights / jnp.sum(weights)  # (B,): the mean over real samples
    loss = -jnp.einsum("kbc,bc,b->k", log_probs, one_hot, sample_weights)

    d_logits = (jnp.exp(log_probs) - one_hot) * sample_weights[:, None]  # (K, B, C)
    d_hidden = jnp.einsum("kbc,khc->kbh", d_logits, params.output_kernel)
    d_pre_activation = jnp.where(pre_activation > 0, d_hidden, 0.0)
    output_grads = (jnp.einsum("kbh,kbc->khc", hidden, d_logits), jnp.sum(d_logits, axis=1))
    return loss, d_pre_activation, output_grads


def masked(updates: Any, flags: Any) -> Any:
    """``updates`` zeroed where ``flags`` is off: a stopped head must not change (its optimizer state may)."""
    return jax.tree.map(lambda u, on: jnp.where(on.reshape(on.shape + (1,) * (u.ndim - 1)), u, 0.0),
                        updates, flags)


def _optimizer(chunk: Chunk, train_config: TrainConfig) -> optax.GradientTransformation:
    # Packed tiles do not line up with heads, so the optimizer runs on the whole chunk
    # at once; packing is only used with ROW_SEPARABLE_OPTIMIZERS, for which this is
    # the same computation as one optimizer per head.
    optimizer = make_optimizer(train_config)
    if chunk.packed:
        return optimizer
    return optax.GradientTransformation(jax.vmap(optimizer.init), jax.vmap(optimizer.update))


def init(params: head.HeadParams, chunk: Chunk, train_config: TrainConfig, plan: TrainingPlan) -> Any:
    """The step's state: the chunk's training weights and their optimizer state."""
    return params, _optimizer(chunk, train_config).init(params)


def params(state: Any) -> head.HeadParams:
    return state[0]


def epoch(state: Any, indices: jax.Array, weights: jax.Array, running: jax.Array, chunk: Chunk,
          train_config: TrainConfig, plan: TrainingPlan) -> tuple[Any, jax.Array]:
    """One pass over the minibatches ``indices`` (S, B) with sample ``weights`` (S, B).

    ``running`` (K,) bool: heads still training (the others' weights stay).
    Returns the new state and the (S, K) minibatch losses.
    """
    update = _optimizer(chunk, train_config).update
    flags = chunk.per_leaf(running)  # once per epoch, not per step

    def step(carry, batch):
        params, opt_state = carry
        batch_indices, batch_weights = batch
        inputs = chunk.first_layer_inputs(chunk.x[batch_indices])
        losses, grads = population_loss_and_grads(
            params, inputs, chunk.y[batch_indices], batch_weights, chunk.tile_head,
            chunk.sum_tiles if chunk.packed else None, plan.kernel_transposed,
        )
        updates, opt_state = update(grads, opt_state, params)
        return (optax.apply_updates(params, masked(updates, flags)), opt_state), losses

    return jax.lax.scan(step, state, (indices, weights))

