"""The fused SGD training step of packed chunks: the first layer's step as one Pallas kernel per tile.

A step module of the trainer (``trainer.STEPS``, ``EngineConfig.step``
``"fused_sgd"``). Each step runs ``fused_sgd.sgd_step``: the first kernel's
gradient, its SGD update and the next minibatch's forward product, so the
kernel is read and written once per step and stopped heads are skipped; optax
updates the later layers (the second hidden layer, if any, and the output
layer). The scan carries each tile's forward product from
one step to the next. Its reference is ``xla_step`` (tests/test_trainer.py
checks the two against each other, the kernel in Pallas' interpreter off a GPU).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from evojax_prune import head
from evojax_prune.config import TrainConfig
from evojax_prune.train import fused_sgd
from evojax_prune.train.optimizer import make_optimizer
from evojax_prune.train.packing import Chunk
from evojax_prune.train.plan import TrainingPlan
from evojax_prune.train.xla_step import loss_and_backward, masked


def init(params: head.HeadParams, chunk: Chunk, train_config: TrainConfig, plan: TrainingPlan) -> Any:
    """The weights, optax's state of the later layers and the first kernel's momentum (None without)."""
    momentum = jnp.zeros_like(params.hidden_kernel) if train_config.momentum else None
    output_state = make_optimizer(train_config).init(_later_layers(params))
    return params, (output_state, momentum)


def _later_layers(params: head.HeadParams) -> tuple:
    """The layers optax updates: every one after the first (the second kernel None in a one-layer head)."""
    return params.output_kernel, params.output_bias, params.second_kernel


def params(state: Any) -> head.HeadParams:
    return state[0]


def epoch(state: Any, indices: jax.Array, weights: jax.Array, running: jax.Array, chunk: Chunk,
          train_config: TrainConfig, plan: TrainingPlan) -> tuple[Any, jax.Array]:
    """One pass over the minibatches ``indices`` (S, B); see ``xla_step.epoch``."""
    update = make_optimizer(train_config).update
    flags = chunk.per_leaf(running)

    def step(carry, batch):
        # The carry holds this minibatch's first-layer products, per tile, computed by the
        # previous step's kernel with the weights this step starts from.
        params, (output_state, momentum), products = carry
        batch_indices, batch_weights, next_indices = batch
        x_batch = chunk.x[batch_indices]
        losses, d_pre_activation, later_grads = loss_and_backward(
            params, chunk.sum_tiles(products), chunk.y[batch_indices], batch_weights, chunk.neurons_kept,
            train_config.probability_epsilon,
        )
        hidden_kernel, momentum, products = fused_sgd.sgd_step(
            params.hidden_kernel, momentum, x_batch.T[chunk.index],
            jnp.take(d_pre_activation, chunk.tile_head, axis=0, mode="clip"),  # (tiles, B, H)
            chunk.first_layer_inputs(chunk.x[next_indices]), flags.hidden_kernel,
            learning_rate=train_config.learning_rate, decay=train_config.momentum,
            nesterov=train_config.nesterov, interpret=plan.interpret_kernels,
        )
        later = _later_layers(params)
        updates, output_state = update(_later_layers(later_grads), output_state, later)
        updates = masked(updates, _later_layers(flags))
        output_kernel, output_bias, second_kernel = optax.apply_updates(later, updates)
        params = head.HeadParams(hidden_kernel, output_kernel, output_bias, second_kernel)
        return (params, (output_state, momentum), products), losses

    params, step_state = state
    # The first minibatch's products; the last step's "next" products (of the first
    # minibatch again) are dropped.
    products = jnp.einsum("tbr,trh->tbh", chunk.first_layer_inputs(chunk.x[indices[0]]), params.hidden_kernel)
    next_indices = jnp.roll(indices, -1, axis=0)
    (params, step_state, _), losses = jax.lax.scan(
        step, (params, step_state, products), (indices, weights, next_indices)
    )
    return (params, step_state), losses
