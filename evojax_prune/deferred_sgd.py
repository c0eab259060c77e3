"""SGD with momentum over a window of steps as one linear map: the tables behind deferred updates.

Each SGD step of a head changes its first kernel by a rank-B matrix, the
gradient G_j = X_jᵀ D_j (inputs X_j (B, D), pre-activation gradient
D_j (B, H)). With optax's SGD (trace ``m = G + mu * m``; Nesterov
``w -= lr * (G + mu * m)``, else ``w -= lr * m``), the weights and momentum after
t steps of a window are linear in the window's start (w_0, m_0) and its
gradients, with scalar coefficients that depend only on mu, Nesterov and t:

    m_t = m_decay[t] m_0 + sum_k c[t, k] G_k,
    w_t = w_0 - lr (a[t] m_0 + sum_k b[t, k] G_k).

So step j's pre-activation needs no pass over the kernel once the window's
products with w_0 and m_0 are known:

    X_j w_j = X_j w_0 - lr (a[j] X_j m_0 + sum_{k<j} b[j, k] (X_j X_kᵀ) D_k),

and the kernel and momentum are written once per window, at its end, by one
rank-(L B) product per head. ``trainer.DEFERRED_WINDOW`` trains this way.

Reference: optax.sgd (optax/_src/alias.py, transform.trace).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def coefficients(window: int, decay: float, nesterov: bool) -> tuple[np.ndarray, ...]:
    """The tables of a window of ``window`` steps, from optax's recurrence run on symbols.

    The state is written over the basis (m_0, G_0 ... G_{L-1}), the weights
    relative to w_0 and in units of -lr, so the tables follow optax's update
    rule by construction rather than by a derived formula.

    Returns:
      a: (L + 1,) float64, a[t]: m_0's coefficient in (w_0 - w_t) / lr.
      b: (L + 1, L), b[t, k]: G_k's coefficient in (w_0 - w_t) / lr (0 for k >= t).
      m_decay: (L + 1,), m_0's coefficient in m_t (decay ** t).
      c: (L + 1, L), G_k's coefficient in m_t (0 for k >= t).
    """
    basis = window + 1  # m_0, then G_0 ... G_{L-1}
    momentum = np.zeros(basis)
    momentum[0] = 1.0
    weights = np.zeros(basis)
    w_rows, m_rows = [weights.copy()], [momentum.copy()]
    for step in range(window):
        grad = np.zeros(basis)
        grad[step + 1] = 1.0
        momentum = grad + decay * momentum  # optax.trace
        weights = weights + (grad + decay * momentum if nesterov else momentum)
        w_rows.append(weights.copy())
        m_rows.append(momentum.copy())
    w_rows, m_rows = np.array(w_rows), np.array(m_rows)
    return w_rows[:, 0], w_rows[:, 1:], m_rows[:, 0], m_rows[:, 1:]


def window_length(steps: int, longest: int) -> int:
    """Steps per window for an epoch of ``steps``: windows of at most ``longest``, as even as possible.

    An epoch of 63 steps with windows of at most 16 gets 4 windows of 16 (the
    last one has a padding step), not 3 of 16 and one of 15 padded to 16.
    """
    windows = -(-steps // max(1, longest))
    return -(-steps // windows)
