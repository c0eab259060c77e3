"""The tables of deferred SGD updates against optax's own recurrence."""

import numpy as np
import optax
import pytest

from evojax_prune import deferred_sgd


def test_one_and_two_steps_in_closed_form():
    a, b, m_decay, c = deferred_sgd.coefficients(3, 0.5, True)
    # One Nesterov step: w_1 = w_0 - lr ((1 + mu) G_0 + mu^2 m_0); m_1 = mu m_0 + G_0.
    assert a[1] == 0.25 and b[1, 0] == 1.5 and m_decay[1] == 0.5 and c[1, 0] == 1.0
    assert not b[1, 1:].any() and not b[0].any() and not c[1, 1:].any()  # no step, no change
    a, b, m_decay, c = deferred_sgd.coefficients(3, 0.5, False)
    assert a[1] == 0.5 and b[1, 0] == 1.0 and a[2] == 0.75 and b[2, 0] == 1.5 and b[2, 1] == 1.0


@pytest.mark.parametrize("decay, nesterov", [(0.9, True), (0.9, False), (0.0, False)])
def test_tables_reproduce_optax_sgd(decay, nesterov):
    """Any window length: the linear map gives optax's weights and trace after every step."""
    rng = np.random.default_rng(0)
    window, learning_rate = 7, 0.1
    w0, m0 = rng.standard_normal(5), rng.standard_normal(5)
    grads = rng.standard_normal((window, 5))
    a, b, m_decay, c = deferred_sgd.coefficients(window, decay, nesterov)
    optimizer = optax.sgd(learning_rate, momentum=decay or None, nesterov=nesterov)
    state = optimizer.init(w0)
    if decay:
        state = (optax.TraceState(trace=m0), *state[1:])
    weights = w0
    for t in range(1, window + 1):
        updates, state = optimizer.update(grads[t - 1], state, weights)
        weights = optax.apply_updates(weights, updates)
        start = m0 if decay else np.zeros_like(m0)
        np.testing.assert_allclose(weights, w0 - learning_rate * (a[t] * start + b[t] @ grads), rtol=1e-5)
        if decay:
            np.testing.assert_allclose(state[0].trace, m_decay[t] * m0 + c[t] @ grads, rtol=1e-5)


def test_window_lengths_are_even():
    lengths = [deferred_sgd.window_length(63, longest) for longest in (16, 32, 63, 100, 1)]
    assert lengths == [16, 32, 63, 63, 1]
