"""SGD on a packed first layer in one kernel: gradient, momentum, update and the next forward product.

A training step of a chunk of heads is bound by memory traffic over the first
kernel, (T, r, H) for T packed tiles of r kept rows (``trainer.ChunkLayout``):
each SGD step computes a rank-B gradient ``inputsᵀ @ d_pre_activation`` and
applies it. Left to XLA, a step moves the kernel about seven times: the
forward product reads it, the gradient product writes a kernel-sized gradient,
and the optimizer's fusion reads the kernel, its momentum and the gradient
and writes the kernel and the momentum back; on an H100 the optimizer's
fusion took about half of a step's device time (``benchmarks/step_profile.py``;
docs/benchmarks.md, "Measurements behind the docstrings").

``sgd_step`` does the step's work on the kernel in one Pallas kernel, one
program per (tile, block of hidden units):

  * the gradient block ``inputs_tileᵀ @ d_pre_activation_block`` (r, block),
    never written to memory;
  * the optax SGD update of that block, read and written once, with its
    momentum (``optax.sgd``: trace ``m = g + mu * m``, Nesterov ``u = g + mu * m``,
    else ``u = m``; ``w + (-lr) * u``);
  * the next minibatch's first-layer product with the updated block,
    ``next_inputs_tile @ w_block`` (B, block): the forward pass of the next
    step, so that the kernel is not read again for it.

That is four passes over the kernel per step (read and write the kernel and
its momentum), the bound ``benchmarks/trainer_throughput.py`` counts. A tile
that does not train (a stopped head, or a tile past the last head) is
skipped: its kernel and momentum are updated in place (``input_output_aliases``)
and it neither reads nor writes them, so stopped heads and padding cost no
traffic at all.

On a GPU the kernel is compiled by Triton (Pallas' GPU backend), where block
dimensions must be powers of two and products at least 16 wide
(``supported``); elsewhere it runs in Pallas' interpreter, which tests use as
the reference check of the kernel's semantics. Memory: nothing beyond the
operands; the kernel and its momentum are updated in place, and the only new
array is the (T, B, H) product, 1/4 of the kernel's size at r = 128, B = 32.

Reference: optax.sgd (optax/_src/alias.py, transform.trace).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Hidden units per program: (r, 64) blocks of the kernel and its momentum, 32 KiB
# each for r = 128, leave room for the gradient block in registers. With Triton's
# warps and pipeline stages, the settings benchmarks/fused_sgd_step.py compares
# (the only ones measured on a GPU so far: docs/benchmarks.md).
BLOCK_HIDDEN = 64
NUM_WARPS = 4
NUM_STAGES = 1
_MIN_DOT = 16  # Triton's smallest matrix-product dimension


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def block_hidden(hidden: int) -> int:
    """The hidden units one program updates: ``BLOCK_HIDDEN``, or H when it is smaller."""
    return min(BLOCK_HIDDEN, hidden)


def supported(tile_rows: int, batch_size: int, hidden: int) -> str | None:
    """Why the compiled (Triton) kernel cannot run these shapes, or None when it can.

    Args:
      tile_rows: r, rows of a packed tile.
      batch_size: B, the minibatch size.
      hidden: H, the hidden units of a head.
    """
    block = block_hidden(hidden)
    for name, value in (("tile rows", tile_rows), ("batch size", batch_size), ("hidden block", block)):
        if not _is_power_of_two(value) or value < _MIN_DOT:
            return f"{name} {value} is not a power of two >= {_MIN_DOT}"
    if hidden % block:
        return f"hidden units {hidden} are not a multiple of {block}"
    return None


def sgd_update(
    param: jax.Array, grad: jax.Array, trace: jax.Array | None, *, learning_rate: float, decay: float,
    nesterov: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """optax.sgd on one block, inside a kernel: the new parameters and trace (None for plain SGD).

    ``trace`` is optax's momentum: ``trace = grad + decay * trace``; the update is
    ``grad + decay * trace`` with Nesterov, else ``trace``; ``param - learning_rate * update``.
    """
    if trace is None:
        return param + (-learning_rate) * grad, None
    trace = grad + decay * trace
    update = grad + decay * trace if nesterov else trace
    return param + (-learning_rate) * update, trace


def pallas_call(body, *, interpret: bool, num_warps: int, num_stages: int, **call_arguments):
    """``pl.pallas_call`` compiled by Triton on a GPU (with ``num_warps`` and ``num_stages``).

    The Triton settings are passed explicitly because jax otherwise compiles Pallas
    for GPUs with Mosaic, whose kernels look different; elsewhere the interpreter.
    """
    compiler_params = None
    if not interpret:
        from jax.experimental.pallas import triton as pallas_triton

        compiler_params = pallas_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return pl.pallas_call(body, interpret=interpret, compiler_params=compiler_params, **call_arguments)


def sgd_step(
    kernel: jax.Array,
    momentum: jax.Array | None,
    inputs_transposed: jax.Array,
    d_pre_activation: jax.Array,
    next_inputs: jax.Array,
    training: jax.Array,
    *,
    learning_rate: float,
    decay: float,
    nesterov: bool,
    interpret: bool,
    block: int | None = None,
    num_warps: int = NUM_WARPS,
    num_stages: int = NUM_STAGES,
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """One SGD step of a packed first kernel and the next step's forward product.

    Args:
      kernel: (T, r, H) float32, T tiles of r kept rows of the heads' first kernels.
      momentum: (T, r, H) float32, its SGD momentum (optax's trace), or None
        for plain SGD (``decay`` 0).
      inputs_transposed: (T, r, B) float32, this step's first-layer inputs of
        each tile, transposed.
      d_pre_activation: (T, B, H) float32, the loss gradient with respect to
        the pre-activation of each tile's head.
      next_inputs: (T, B, r) float32, the next step's inputs of each tile.
      training: (T,) bool, whether each tile trains; the others are left as
        they are and their forward product is zero.
      learning_rate, decay, nesterov: ``optax.sgd(learning_rate, decay or None, nesterov)``.
      interpret: run Pallas' interpreter (off a GPU; ``TrainingPlan.interpret_kernels``).
      block, num_warps, num_stages: hidden units per program (default
        ``block_hidden(H)``; a power of two dividing H) and Triton's warps and
        pipeline stages per program.

    Returns:
      kernel: (T, r, H) the updated kernel (in place of ``kernel``).
      momentum: (T, r, H) the updated momentum, or None.
      next_product: (T, B, H) float32, ``next_inputs @ kernel`` per tile with
        the updated kernel (zero for tiles that do not train).
    """
    num_tiles, rows, hidden = kernel.shape
    batch = d_pre_activation.shape[1]
    block = block or block_hidden(hidden)
    if hidden % block:
        raise ValueError(f"fused_sgd.sgd_step: block {block} does not divide the {hidden} hidden units")
    with_momentum = momentum is not None
    hyper = dict(learning_rate=learning_rate, decay=decay, nesterov=nesterov)

    def body(training_ref, kernel_ref, *refs):
        if with_momentum:
            momentum_ref, inputs_ref, d_ref, next_ref, kernel_out, momentum_out, product_out = refs
        else:
            inputs_ref, d_ref, next_ref, kernel_out, product_out = refs

        @pl.when(training_ref[0] != 0)
        def _update():
            grad = jnp.dot(inputs_ref[...], d_ref[...], preferred_element_type=jnp.float32)  # (r, block)
            old_trace = momentum_ref[...] if with_momentum else None
            new_kernel, trace = sgd_update(kernel_ref[...], grad, old_trace, **hyper)
            kernel_out[...] = new_kernel
            if with_momentum:
                momentum_out[...] = trace
            product_out[...] = jnp.dot(next_ref[...], new_kernel, preferred_element_type=jnp.float32)

        @pl.when(training_ref[0] == 0)
        def _skip():
            product_out[...] = jnp.zeros((batch, block), jnp.float32)

    squeezed = getattr(pl, "squeezed", None)
    weights_spec = pl.BlockSpec((squeezed, rows, block), lambda tile, part: (tile, 0, part))
    in_specs = [
        pl.BlockSpec((1,), lambda tile, part: (tile,)),
        weights_spec,
        *([weights_spec] if with_momentum else []),
        pl.BlockSpec((squeezed, rows, batch), lambda tile, part: (tile, 0, 0)),
        pl.BlockSpec((squeezed, batch, block), lambda tile, part: (tile, 0, part)),
        pl.BlockSpec((squeezed, batch, rows), lambda tile, part: (tile, 0, 0)),
    ]
    product_spec = pl.BlockSpec((squeezed, batch, block), lambda tile, part: (tile, 0, part))
    # In place, which is what lets a skipped tile write nothing.
    call = _updating_call(
        body, kernel_operand=1, weights_spec=weights_spec, product_spec=product_spec,
        product_shape=(num_tiles, batch, hidden), kernel_shape=kernel.shape, with_momentum=with_momentum,
        grid=(num_tiles, hidden // block), in_specs=in_specs, interpret=interpret, num_warps=num_warps,
        num_stages=num_stages, name="fused_sgd_step",
    )
    operands = [training.astype(jnp.int32), kernel, *([momentum] if with_momentum else []),
                inputs_transposed, d_pre_activation, next_inputs]
    return _kernel_momentum_product(call(*operands), with_momentum)


def _updating_call(body, *, kernel_operand: int, weights_spec, product_spec, product_shape, kernel_shape,
                   with_momentum: bool, **call_arguments):
    """A ``pallas_call`` whose outputs are the kernel and its momentum, updated in place, then a product.

    ``kernel_operand``: the kernel's place among the operands, the momentum (if
    any) right after it; they become outputs 0 and 1.
    """
    updated = 2 if with_momentum else 1
    weights_shape = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
    return pallas_call(
        body,
        out_shape=[weights_shape] * updated + [jax.ShapeDtypeStruct(product_shape, jnp.float32)],
        out_specs=[weights_spec] * updated + [product_spec],
        input_output_aliases={kernel_operand + output: output for output in range(updated)},
        **call_arguments,
    )


def _kernel_momentum_product(outputs, with_momentum: bool):
    """A kernel's outputs as (kernel, momentum or None, product)."""
    if with_momentum:
        return outputs[0], outputs[1], outputs[2]
    return outputs[0], None, outputs[1]
