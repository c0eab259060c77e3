"""The fused SGD kernels (Pallas, interpreted on the CPU) against optax.sgd and plain products."""


import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evojax_prune.train import fused_sgd


def optax_step(kernel, momentum, inputs_transposed, d_pre_activation, next_inputs, training, *,
               learning_rate, decay, nesterov):
    """The same step with optax and einsum, tile by tile as the trainer's XLA path does it."""
    grad = np.einsum("trb,tbh->trh", inputs_transposed, d_pre_activation)
    optimizer = optax.sgd(learning_rate, momentum=decay or None, nesterov=nesterov)
    state = optimizer.init(jnp.asarray(kernel))
    if momentum is not None:
        state = (optax.TraceState(trace=jnp.asarray(momentum)), *state[1:])
    update, state = optimizer.update(jnp.asarray(grad), state, jnp.asarray(kernel))
    on = np.asarray(training)[:, None, None]
    new_kernel = np.where(on, np.asarray(optax.apply_updates(jnp.asarray(kernel), update)), kernel)
    new_momentum = None if momentum is None else np.where(on, np.asarray(state[0].trace), momentum)
    product = np.where(on, np.einsum("tbr,trh->tbh", next_inputs, new_kernel), 0.0)
    return new_kernel, new_momentum, product


def random_step(seed, tiles=5, rows=16, batch=16, hidden=128, with_momentum=True):
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return dict(
        kernel=normal(tiles, rows, hidden, scale=0.05),
        momentum=normal(tiles, rows, hidden, scale=0.01) if with_momentum else None,
        inputs_transposed=normal(tiles, rows, batch),
        d_pre_activation=normal(tiles, batch, hidden, scale=0.1),
        next_inputs=normal(tiles, batch, rows),
        training=np.array([True, False, True, True, False])[:tiles],
    )


@pytest.mark.parametrize(
    "decay, nesterov", [(0.9, True), (0.9, False), (0.0, False)], ids=["nesterov", "momentum", "plain"]
)
def test_fused_step_equals_optax_sgd(decay, nesterov):
    operands = random_step(0, with_momentum=decay > 0)
    hyper = dict(learning_rate=1e-2, decay=decay, nesterov=nesterov)
    kernel, momentum, product = fused_sgd.sgd_step(**{k: jnp.asarray(v) if v is not None else None
                                                      for k, v in operands.items()}, **hyper,
                                                   interpret=True)
    want_kernel, want_momentum, want_product = optax_step(**operands, **hyper)
    np.testing.assert_allclose(kernel, want_kernel, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(product, want_product, rtol=1e-5, atol=1e-5)
    if decay:
        np.testing.assert_allclose(momentum, want_momentum, rtol=1e-6, atol=1e-7)
    else:
        assert momentum is None
    # Tiles that do not train are left exactly as they were and give no product.
    idle = ~operands["training"]
    np.testing.assert_array_equal(np.asarray(kernel)[idle], operands["kernel"][idle])
    assert not np.asarray(product)[idle].any()
    assert not np.allclose(np.asarray(kernel)[~idle], operands["kernel"][~idle])


def test_fused_step_jits_and_runs_in_a_loop():
    """Carried through a scan, as the trainer does: the in-place aliasing must not leak state."""
    operands = {k: jnp.asarray(v) for k, v in random_step(1).items()}
    hyper = dict(learning_rate=1e-2, decay=0.9, nesterov=True)

    def run(step_fn):
        def body(carry, _):
            kernel, momentum, _ = carry
            return step_fn(kernel, momentum, operands["inputs_transposed"], operands["d_pre_activation"],
                           operands["next_inputs"], operands["training"], **hyper), None

        start = (operands["kernel"], operands["momentum"], jnp.zeros_like(operands["d_pre_activation"]))
        return jax.jit(lambda start: jax.lax.scan(body, start, length=3)[0])(start)

    def reference(*args, **kwargs):
        return tuple(jnp.asarray(a) for a in optax_step(*[np.asarray(a) for a in args], **kwargs))

    got = run(functools.partial(fused_sgd.sgd_step, interpret=True))
    want = (operands["kernel"], operands["momentum"], None)
    for _ in range(3):
        want = reference(want[0], want[1], operands["inputs_transposed"], operands["d_pre_activation"],
                         operands["next_inputs"], operands["training"], **hyper)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_momentum", [True, False], ids=["momentum", "plain"])
def test_kernel_lowers_to_triton_for_a_gpu(with_momentum):
    """Pallas' Triton lowering runs on the host: a kernel it cannot lower fails here, without a GPU."""
    tiles, rows, batch, hidden = 4, 128, 32, 512
    zeros = jnp.zeros
    arguments = (zeros((tiles, rows, hidden)), zeros((tiles, rows, hidden)) if with_momentum else None,
                 zeros((tiles, rows, batch)), zeros((tiles, batch, hidden)), zeros((tiles, batch, rows)),
                 jnp.ones((tiles,), bool))
    for block in (32, 64, 128):
        step = jax.jit(lambda *operands, block=block: fused_sgd.sgd_step(
            *operands, learning_rate=1e-3, decay=0.9 if with_momentum else 0.0, nesterov=with_momentum,
            interpret=False, block=block))
        lowered = step.trace(*arguments).lower(lowering_platforms=("cuda",))
        assert "xla.gpu.triton" in lowered.as_text()


def test_supported_shapes_name_the_problem():
    assert fused_sgd.supported(128, 32, 512) is None
    assert "batch size 30" in fused_sgd.supported(128, 30, 512)
    assert "tile rows 8" in fused_sgd.supported(8, 32, 512)
    assert "hidden units 96" in fused_sgd.supported(128, 32, 96)


def test_trainer_lowers_for_a_gpu_with_the_fused_kernel():
    """The whole training program as a GPU gets it (Triton kernels, tiles summed by gathering).

    The plan is made for a GPU (``plan.make_plan(platform="gpu")``), which is
    everything the traced program asks about the hardware.
    """
    from evojax_prune.config import EngineConfig, HeadConfig, TrainConfig
    from evojax_prune.train import plan, trainer

    num_features, hidden, heads, samples = 256, 64, 4, 40
    train = TrainConfig(batch_size=16, max_epochs=2)
    gpu_plan = plan.make_plan(EngineConfig(chunk_size=heads), train, population=heads,
                              num_features=num_features, num_classes=3, hidden=hidden, platform="gpu")
    assert gpu_plan.step == "fused_sgd" and gpu_plan.tile_sum == "gather" and not gpu_plan.interpret_kernels
    masks = np.random.default_rng(0).random((heads, num_features)) < 0.5
    lowered = trainer.trace_training(
        jax.random.key(0), masks, np.zeros((samples, num_features), np.float32), np.zeros(samples, np.int32),
        num_classes=3, head_config=HeadConfig(hidden=hidden), train_config=train, plan=gpu_plan,
    ).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    assert text.count("xla.gpu.triton") == len(gpu_plan.layouts)  # one kernel in each layout's branch
    assert "fused_sgd_step" in text


def test_where_the_trainer_uses_the_kernel():
    from evojax_prune.config import EngineConfig, TrainConfig
    from evojax_prune.train import plan

    def step(platform, engine=None, chunk_size=32, **train):
        engine = EngineConfig(**{"chunk_size": chunk_size, **(engine or {})})
        return plan.make_plan(engine, TrainConfig(**train), population=32, num_features=2048, num_classes=3,
                              hidden=512, platform=platform).step

    assert step("gpu") == "fused_sgd"  # the authors' protocol on a GPU
    assert step("cpu") == "xla"  # not unless asked for
    assert step("cpu", {"step": "fused_sgd"}) == "fused_sgd"  # interpreted
    assert step("gpu", {"step": "xla"}) == "xla"
    assert step("gpu", chunk_size=1) == "xla"  # chunks of one head: XLA
    assert step("gpu", {"step": "fused_sgd"}, chunk_size=1) == "xla"
    assert step("gpu", optimizer="adam") == "xla"
    assert step("gpu", optimizer_options=(("accumulator_dtype", None),)) == "xla"
    # Shapes Triton cannot compile: XLA's step by default, an error when the kernel was asked for.
    assert step("gpu", batch_size=30) == "xla"
    with pytest.raises(ValueError, match="batch size 30 is not a power of two"):
        step("gpu", {"step": "fused_sgd"}, batch_size=30)
    with pytest.raises(ValueError, match=r"EngineConfig\.step must be 'auto' or one of"):
        EngineConfig(step=True)
