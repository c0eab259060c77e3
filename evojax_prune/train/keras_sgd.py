"""Keras' SGD with its ``decay``: the authors' optimizer as an optax transformation.

Keras 2.2.4's ``SGD(lr, momentum, decay, nesterov)`` updates, at its step t
(0-based, counted per optimizer):

    lr_t = lr / (1 + decay * t)
    v    = momentum * v - lr_t * g
    p   += momentum * v - lr_t * g     (Nesterov)
    p   += v                           (otherwise)

``optax.sgd`` keeps the momentum of the raw gradients and scales the whole
update by the learning rate, which is the same computation while the
learning rate is constant; with a decaying rate the two differ (Keras'
velocity remembers each step's own rate), so the faithful mode
(``TrainConfig.lr_decay``) uses this form. The authors ran decay 1e-6: over
600 epochs of 79 steps (RPS) the rate falls by 4.5%.

Reference: keras/optimizers.py, class SGD (Keras 2.2.4).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class KerasSgdState(NamedTuple):
    count: jax.Array  # () int32, steps taken
    velocity: optax.Updates  # like the parameters; None without momentum


def keras_sgd(learning_rate: float, momentum: float, nesterov: bool,
              decay: float) -> optax.GradientTransformation:
    """Keras' SGD as an optax ``GradientTransformation`` (its updates are added to the parameters)."""

    def init(params):
        velocity = jax.tree.map(jnp.zeros_like, params) if momentum else None
        return KerasSgdState(jnp.zeros((), jnp.int32), velocity)

    def update(grads, state, params=None):
        del params
        rate = learning_rate / (1.0 + decay * state.count.astype(jnp.float32))
        if not momentum:
            return jax.tree.map(lambda g: -rate * g, grads), KerasSgdState(state.count + 1, None)
        velocity = jax.tree.map(lambda v, g: momentum * v - rate * g, state.velocity, grads)
        if nesterov:
            updates = jax.tree.map(lambda v, g: momentum * v - rate * g, velocity, grads)
        else:
            updates = velocity
        return updates, KerasSgdState(state.count + 1, velocity)

    return optax.GradientTransformation(init, update)
