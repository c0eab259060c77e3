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
    neurons_kept: tuple[jax.Array | None, jax.Array | None] = (None, None),
    probability_epsilon: float = 0.0,
) -> tuple[jax.Array, head.HeadParams]:
    """Softmax cross-entropy of K heads on one minibatch, and its gradients.

    The backward pass is written out rather than taken with ``jax.grad`` of a
    ``vmap``: autodiff there emits the kernel gradient as (K, H, c) followed by
    a transpose, which XLA on CPU fuses into the optimizer update as a strided
    read, several times slower per step (docs/benchmarks.md, "Measurements
    behind the docstrings").
    Here every product comes out in the layout its consumer reads.

    Args:
      params: K heads, hidden_kernel (K, c, H), output_kernel (K, H, C),
        output_bias (K, C), second_kernel (K, H, H) or None, float32. With
        ``tile_head``, hidden_kernel is (T, r, H) instead: T tiles of r kept
        rows, packed across the heads.
      inputs: (K, B, c) float32, each head's first-layer input: the minibatch
        times the mask, or the kept columns of the minibatch; with
        ``tile_head``, (T, B, r), each tile's columns.
      labels: (B,) int32 class indices.
      weights: (B,) float32, 1 for a real sample and 0 for padding.
      tile_head: (T,) int32, sorted, the head each tile belongs to (K: an
        unused tile). A head's first layer is the sum of its tiles' products.
      sum_tiles: (T, B, H) -> (K, B, H), that sum; given with ``tile_head``.
      kernel_transposed: hidden_kernel is (K, H, c), and so is its gradient.
      neurons_kept: (K, H) float32 0/1 masks of the first and second hidden
        layers' neurons, or None where every neuron is kept.
      probability_epsilon: ``TrainConfig.probability_epsilon`` (Keras' clipped
        cross-entropy; 0 for the exact one).

    Returns:
      loss: (K,) float32, sum(weights * cross-entropy) / sum(weights) per head.
      grads: ``HeadParams`` shaped like ``params``.
    """
    first_layer = "kbc,khc->kbh" if kernel_transposed else "kbc,kch->kbh"
    pre_activation = jnp.einsum(first_layer, inputs, params.hidden_kernel)
    if tile_head is not None:  # (T, B, H) partial products -> (K, B, H); unused tiles dropped
        pre_activation = sum_tiles(pre_activation)
    loss, d_pre_activation, later_grads = loss_and_backward(params, pre_activation, labels, weights,
                                                            neurons_kept, probability_epsilon)
    if tile_head is not None:  # each tile gets its head's gradient (unused tiles: zero inputs)
        d_pre_activation = jnp.take(d_pre_activation, tile_head, axis=0, mode="clip")
    if kernel_transposed:
        hidden_kernel_grad = jnp.einsum("kbh,kbc->khc", d_pre_activation, inputs)
    else:
        hidden_kernel_grad = jnp.einsum("kbc,kbh->kch", inputs, d_pre_activation)
    return loss, later_grads.replace(hidden_kernel=hidden_kernel_grad)


def _keep(values: jax.Array, kept: jax.Array | None) -> jax.Array:
    """(K, B, H) values with the pruned neurons' (K, H) zeroed."""
    return values if kept is None else values * kept[:, None, :]


def loss_and_backward(
    params: head.HeadParams, pre_activation: jax.Array, labels: jax.Array, weights: jax.Array,
    neurons_kept: tuple[jax.Array | None, jax.Array | None] = (None, None),
    probability_epsilon: float = 0.0,
) -> tuple[jax.Array, jax.Array, head.HeadParams]:
    """The heads' loss from their first layer's (K, B, H) pre-activation, and the backward pass to it.

    ``neurons_kept`` as in ``population_loss_and_grads``: a pruned neuron's
    activation is zero, so neither its incoming nor its outgoing weights get a
    gradient. With ``probability_epsilon`` eps > 0 the loss is Keras'
    categorical cross-entropy, ``-log(clip(p_y, eps, 1 - eps))`` of the
    softmax probability p_y of the right class: a sample beyond the bounds
    gives no gradient, as TensorFlow's clip passes none there.

    Returns the (K,) loss, the (K, B, H) gradient with respect to the
    pre-activation, and ``HeadParams`` holding the gradients of every layer
    after the first (output kernel (K, H, C), bias (K, C), second kernel
    (K, H, H) or None); its ``hidden_kernel`` is the pre-activation gradient
    again, a placeholder for the caller's.
    """
    first_kept, second_kept = neurons_kept
    hidden = _keep(jax.nn.relu(pre_activation), first_kept)
    last = hidden
    if params.second_kernel is not None:
        second_pre_activation = jnp.einsum("kbh,khg->kbg", hidden, params.second_kernel)
        last = _keep(jax.nn.relu(second_pre_activation), second_kept)
    logits = jnp.einsum("kbh,khc->kbc", last, params.output_kernel) + params.output_bias[:, None, :]
    log_probs = jax.nn.log_softmax(logits)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    sample_weights = weights / jnp.sum(weights)  # (B,): the mean over real samples
    if probability_epsilon:
        probabilities = jnp.exp(log_probs)
        right = jnp.einsum("kbc,bc->kb", probabilities, one_hot)
        loss = -jnp.einsum("kb,b->k", jnp.log(jnp.clip(right, probability_epsilon, 1 - probability_epsilon)),
                           sample_weights)
        inside = (right >= probability_epsilon) & (right <= 1 - probability_epsilon)
        d_logits = (probabilities - one_hot) * (sample_weights[None, :] * inside)[:, :, None]
    else:
        loss = -jnp.einsum("kbc,bc,b->k", log_probs, one_hot, sample_weights)
        d_logits = (jnp.exp(log_probs) - one_hot) * sample_weights[:, None]  # (K, B, C)
    d_last = jnp.einsum("kbc,khc->kbh", d_logits, params.output_kernel)
    second_kernel_grad = None
    d_hidden = d_last
    if params.second_kernel is not None:
        d_second = _keep(jnp.where(second_pre_activation > 0, d_last, 0.0), second_kept)
        second_kernel_grad = jnp.einsum("kbh,kbg->khg", hidden, d_second)
        d_hidden = jnp.einsum("kbg,khg->kbh", d_second, params.second_kernel)
    d_pre_activation = _keep(jnp.where(pre_activation > 0, d_hidden, 0.0), first_kept)
    grads = head.HeadParams(
        hidden_kernel=d_pre_activation,
        output_kernel=jnp.einsum("kbh,kbc->khc", last, d_logits),
        output_bias=jnp.sum(d_logits, axis=1),
        second_kernel=second_kernel_grad,
    )
    return loss, d_pre_activation, grads


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
            chunk.sum_tiles if chunk.packed else None, plan.kernel_transposed, chunk.neurons_kept,
            train_config.probability_epsilon,
        )
        updates, opt_state = update(grads, opt_state, params)
        return (optax.apply_updates(params, masked(updates, flags)), opt_state), losses

    return jax.lax.scan(step, state, (indices, weights))

