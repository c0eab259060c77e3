"""The fused output-layer kernel (Pallas, interpreted on the CPU) against the XLA step and optax.sgd."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evojax_prune import fused_output, head, trainer


def _pad_classes(array, padded):
    return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, padded - array.shape[-1])])


@pytest.mark.parametrize(
    "num_classes, decay, nesterov",
    [(3, 0.9, True), (3, 0.9, False), (3, 0.0, False), (27, 0.9, True)],
    ids=["nesterov", "momentum", "plain", "27-classes"],
)
def test_output_layer_step_equals_the_xla_step_and_optax(num_classes, decay, nesterov):
    rng = np.random.default_rng(0)
    heads, batch, hidden = 5, 16, 256
    padded = fused_output.padded_classes(num_classes)
    pre_activation = rng.standard_normal((heads, batch, hidden)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    weights = np.ones(batch, np.float32)
    weights[-3:] = 0.0  # the last minibatch's padding
    kernel = (0.1 * rng.standard_normal((heads, hidden, num_classes))).astype(np.float32)
    bias = (0.1 * rng.standard_normal((heads, num_classes))).astype(np.float32)
    momentum = ((0.01 * rng.standard_normal(kernel.shape)).astype(np.float32),
                (0.01 * rng.standard_normal(bias.shape)).astype(np.float32))
    training = np.array([True, False, True, True, False])
    hyper = dict(learning_rate=1e-2, decay=decay, nesterov=nesterov)

    loss, d_pre, new_kernel, new_bias, new_momentum = fused_output.output_layer_step(
        pre_activation, labels, weights / weights.sum(), _pad_classes(kernel, padded),
        _pad_classes(bias, padded), tuple(_pad_classes(m, padded) for m in momentum) if decay else None,
        training, num_classes=num_classes, **hyper)

    params = head.HeadParams(jnp.zeros((heads, 1, hidden)), jnp.asarray(kernel), jnp.asarray(bias))
    want_loss, want_d_pre, grads = trainer._loss_and_backward(params, pre_activation, labels, weights)
    optimizer = optax.sgd(1e-2, momentum=decay or None, nesterov=nesterov)
    state = optimizer.init((kernel, bias))
    if decay:
        state = (optax.TraceState(trace=tuple(map(jnp.asarray, momentum))), *state[1:])
    updates, state = optimizer.update(grads, state, (kernel, bias))
    on = training[:, None]
    np.testing.assert_allclose(loss, np.where(training, want_loss, 0.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_pre, np.where(on[:, :, None], want_d_pre, 0.0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_kernel[..., :num_classes],
                               np.where(on[:, :, None], kernel + updates[0], kernel), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_bias[..., :num_classes], np.where(on, bias + updates[1], bias),
                               rtol=1e-6, atol=1e-7)
    if decay:
        np.testing.assert_allclose(new_momentum[0][..., :num_classes],
                                   np.where(on[:, :, None], state[0].trace[0], momentum[0]),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new_momentum[1][..., :num_classes],
                                   np.where(on, state[0].trace[1], momentum[1]), rtol=1e-6, atol=1e-7)
        assert not np.asarray(new_momentum[0])[..., num_classes:].any()
    else:
        assert new_momentum is None
    # The padded classes get no gradient: they stay zero.
    assert not np.asarray(new_kernel)[..., num_classes:].any()
    assert not np.asarray(new_bias)[..., num_classes:].any()


def test_shapes_are_checked():
    assert [fused_output.padded_classes(c) for c in (1, 3, 16, 17, 27, 100)] == [16, 16, 16, 32, 32, 128]
    assert fused_output.supported(32, 512, 3) is None
    assert "batch size 24" in fused_output.supported(24, 512, 3)
    assert "hidden units 192" in fused_output.supported(32, 192, 3)
    assert "200 classes" in fused_output.supported(32, 512, 200)
    zeros = np.zeros
    with pytest.raises(ValueError, match="must have padded_classes"):
        fused_output.output_layer_step(zeros((2, 16, 128)), zeros(16, np.int32), zeros(16),
                                       zeros((2, 128, 3)), zeros((2, 3)), None, zeros(2, bool), num_classes=3,
                                       learning_rate=1e-3, decay=0.0, nesterov=False)


@pytest.mark.parametrize("with_momentum", [True, False], ids=["momentum", "plain"])
def test_kernel_lowers_to_triton_for_a_gpu(with_momentum):
    """Pallas' Triton lowering runs on the host: a kernel it cannot lower fails here, without a GPU."""
    heads, batch, hidden, classes = 4, 32, 512, 3
    padded = fused_output.padded_classes(classes)
    zeros = jnp.zeros
    momentum = (zeros((heads, hidden, padded)), zeros((heads, padded))) if with_momentum else None
    step = jax.jit(lambda *operands: fused_output.output_layer_step(
        *operands, momentum, jnp.ones((heads,), bool), num_classes=classes, learning_rate=1e-3,
        decay=0.9 if with_momentum else 0.0, nesterov=with_momentum, interpret=False))
    traced = step.trace(zeros((heads, batch, hidden)), zeros((batch,), jnp.int32), zeros((batch,)),
                        zeros((heads, hidden, padded)), zeros((heads, padded)))
    lowered = traced.lower(lowering_platforms=("cuda",))
    assert "xla.gpu.triton" in lowered.as_text()
