"""The epochs' sample orders and minibatches, and the shared initial weights, of ``train_population``.

Determinism: every head starts from the same initial weights and sees the same
minibatch order (the permutation of epoch ``e`` is drawn from
``fold_in(order_key, e)``), so a head's result is a function of its mask, the
data, the configuration and the key alone, whatever the population size, the
head's position in it, or the chunking, up to floating-point reassociation (the
matrix products of different shapes may sum in a different order).

``initial_weights_and_orders`` draws the weights and all E orders, (E, N)
int32, once per call in a jitted call of its own, before training;
``epoch_batches`` cuts one epoch's order into (S, B) minibatches inside the
training program, the last one padded with weight-0 samples (Keras uses the
last partial minibatch; its loss is the mean over its real samples).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from evojax_prune import head


def epoch_orders(order_key: jax.Array, num_epochs: int, num_samples: int) -> jax.Array:
    """The sample order of every epoch: row e is ``permutation(fold_in(order_key, e), N)``.

    Drawn once per call, before training and in a jitted call of its own, so
    that the random-number code (slow for XLA to compile) is not compiled into
    every training program.

    Returns:
      (num_epochs, N) int32; E * N * 4 bytes (6 MB for 600 epochs of 2520 samples).
    """
    return jax.vmap(lambda epoch: jax.random.permutation(jax.random.fold_in(order_key, epoch), num_samples))(
        jnp.arange(num_epochs)
    ).astype(jnp.int32)


def epoch_batches(order: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """One epoch's minibatches, the last one padded to the batch size.

    Args:
      order: (N,) int32, the epoch's sample order.
      batch_size: B.

    Returns:
      indices: (ceil(N / B), B) int32 sample indices; padding points at sample 0.
      weights: (ceil(N / B), B) float32, 1 for a real sample, 0 for padding.
    """
    num_samples = order.shape[0]
    num_batches = -(-num_samples // batch_size)
    padding = num_batches * batch_size - num_samples
    indices = jnp.concatenate([order, jnp.zeros((padding,), jnp.int32)])
    weights = jnp.concatenate([jnp.ones((num_samples,), jnp.float32), jnp.zeros((padding,), jnp.float32)])
    return indices.reshape(num_batches, batch_size), weights.reshape(num_batches, batch_size)


@functools.partial(
    jax.jit,
    static_argnames=("num_features", "num_classes", "hidden", "hidden_layers", "num_epochs", "num_samples"),
)
def initial_weights_and_orders(
    key: jax.Array, *, num_features: int, num_classes: int, hidden: int, hidden_layers: int, num_epochs: int,
    num_samples: int,
) -> tuple[head.HeadParams, jax.Array]:
    """The shared initial weights and every epoch's sample order, from ``split(key)``.

    A jitted call of its own, so that the random-number code (slow for XLA to
    compile) is compiled once per shape, not into every training program.

    Returns:
      ``head.init``'s HeadParams from the first key, and ``epoch_orders`` of
      the second: (num_epochs, num_samples) int32.
    """
    init_key, order_key = jax.random.split(key)
    init_params = head.init(init_key, num_features, num_classes, hidden, hidden_layers)
    return init_params, epoch_orders(order_key, num_epochs, num_samples)
