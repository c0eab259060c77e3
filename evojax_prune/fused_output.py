"""The heads' output layer, loss, backward pass and SGD update in one kernel: one program per head.

After the first layer's pre-activation of a chunk of K heads is known, the rest
of a training step is small: ReLU, the (B, H) @ (H, C) output layer, softmax
cross-entropy, the gradient back to the pre-activation, and the SGD update of
the output kernel and bias. Left to XLA that is about a dozen kernels of a few
microseconds each (products, reductions, elementwise fusions, the optimizer),
and on an H100 a 32-head step spent about 110 of its 259 us there, 44 of them
in the gaps between kernels (``benchmarks/step_profile.py``, 2026-11-26).
``output_layer_step`` does all of it in one kernel, one program per head:

  1. ``logits = relu(pre) @ W + b``, over blocks of hidden units;
  2. the softmax cross-entropy of the minibatch (the mean over its real
     samples) and ``d_logits = (softmax - one_hot) * sample_weight``;
  3. per block of hidden units again: ``d_pre = (d_logits @ Wᵀ) * (pre > 0)``,
     written out for the first layer's step, and the gradient
     ``relu(pre)ᵀ @ d_logits`` of that block of W, applied at once with
     optax's SGD (``fused_sgd`` has the formulas), then the bias.

The classes are padded to ``padded_classes(C)`` (at least 16: Triton's
smallest matrix-product dimension): the caller stores W (K, H, Cp) and b (K, Cp)
padded for the whole of training, padded logits are masked out of the softmax,
so the padding gets zero gradients and stays zero. Heads that do not train
(stopped, padding) are skipped: their weights are left as they are, their loss
and gradient are zero.

On a GPU the kernel is compiled by Triton; elsewhere it runs in Pallas'
interpreter, which tests use to check it against the XLA formulation
(``trainer._loss_and_backward`` and ``optax.sgd``). Its speed on a GPU is
unmeasured (``benchmarks/step_profile.py`` compares it).

Reference: optax.sgd (optax/_src/alias.py); softmax cross-entropy as in
``optax.softmax_cross_entropy``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from evojax_prune import fused_sgd

# Hidden units per pass of a program: (B, 128) blocks of the pre-activation keep a
# program's registers small whatever H is.
HIDDEN_BLOCK = 128
NUM_WARPS = 4
MAX_PADDED_CLASSES = 128
_MIN_DOT = 16
_MASKED_LOGIT = -1e30  # exp(-1e30 - max) is exactly 0 in float32


def padded_classes(num_classes: int) -> int:
    """The class count the output layer is stored with: a power of two, at least 16."""
    return max(_MIN_DOT, 1 << max(num_classes - 1, 0).bit_length())


def hidden_block(hidden: int) -> int:
    """Hidden units per pass: ``HIDDEN_BLOCK``, or H when it is smaller."""
    return min(HIDDEN_BLOCK, hidden)


def supported(batch_size: int, hidden: int, num_classes: int) -> str | None:
    """Why the compiled (Triton) kernel cannot run these shapes, or None when it can."""
    block = hidden_block(hidden)
    for name, value in (("batch size", batch_size), ("hidden block", block)):
        if value < _MIN_DOT or value & (value - 1):
            return f"{name} {value} is not a power of two >= {_MIN_DOT}"
    if hidden % block:
        return f"hidden units {hidden} are not a multiple of {block}"
    if padded_classes(num_classes) > MAX_PADDED_CLASSES:
        return f"{num_classes} classes pad to more than {MAX_PADDED_CLASSES}"
    return None


def output_layer_step(
    pre_activation: jax.Array,
    labels: jax.Array,
    sample_weights: jax.Array,
    output_kernel: jax.Array,
    output_bias: jax.Array,
    momentum: tuple[jax.Array, jax.Array] | None,
    training: jax.Array,
    *,
    num_classes: int,
    learning_rate: float,
    decay: float,
    nesterov: bool,
    interpret: bool | None = None,
    num_warps: int = NUM_WARPS,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Loss, gradient to the pre-activation, and the output layer's SGD step of K heads.

    Args:
      pre_activation: (K, B, H) float32, each head's first-layer pre-activation.
      labels: (B,) int32 class indices.
      sample_weights: (B,) float32, each sample's weight in the loss: 1 / (real
        samples) for a real sample, 0 for padding (the mean over real samples).
      output_kernel: (K, H, Cp) float32, Cp = ``padded_classes(num_classes)``,
        columns past C zero.
      output_bias: (K, Cp) float32, entries past C zero.
      momentum: the SGD momentum (optax's trace) of the kernel and the bias,
        shaped like them, or None for plain SGD (``decay`` 0).
      training: (K,) bool, the heads that train; the others are skipped.
      num_classes: C.
      learning_rate, decay, nesterov: ``optax.sgd(learning_rate, decay or None, nesterov)``.
      interpret: run Pallas' interpreter (default: unless on a GPU).
      num_warps: Triton's warps per program.

    Returns:
      loss: (K,) float32, the minibatch's cross-entropy (0 for heads that do not train).
      d_pre_activation: (K, B, H) float32, the loss gradient with respect to
        ``pre_activation`` (0 for heads that do not train).
      output_kernel, output_bias: updated (in place).
      momentum: updated (in place), or None.
    """
    num_heads, batch, hidden = pre_activation.shape
    padded = output_kernel.shape[-1]
    if padded != padded_classes(num_classes) or output_bias.shape != (num_heads, padded):
        raise ValueError(
            f"fused_output.output_layer_step: output kernel {output_kernel.shape} and bias "
            f"{output_bias.shape} must have padded_classes({num_classes}) = "
            f"{padded_classes(num_classes)} classes"
        )
    block = hidden_block(hidden)
    if hidden % block:
        raise ValueError(
            f"fused_output.output_layer_step: {hidden} hidden units are not a multiple of {block}"
        )
    with_momentum = momentum is not None
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    parts = [pl.ds(part * block, block) for part in range(hidden // block)]
    sgd = functools.partial(fused_sgd.sgd_update, learning_rate=learning_rate, decay=decay, nesterov=nesterov)

    def body(training_ref, labels_ref, weights_ref, pre_ref, kernel_ref, bias_ref, *refs):
        if with_momentum:
            (kernel_momentum_ref, bias_momentum_ref, loss_out, d_pre_out, kernel_out, bias_out,
             kernel_momentum_out, bias_momentum_out) = refs
        else:
            loss_out, d_pre_out, kernel_out, bias_out = refs

        @pl.when(training_ref[0] != 0)
        def _train():
            classes = jax.lax.broadcasted_iota(jnp.int32, (batch, padded), 1)
            logits = jnp.broadcast_to(bias_ref[...][None, :], (batch, padded))
            for columns in parts:
                hidden_block_values = jnp.maximum(pre_ref[:, columns], 0.0)
                logits = logits + jnp.dot(hidden_block_values, kernel_ref[columns, :],
                                          preferred_element_type=jnp.float32)
            logits = jnp.where(classes < num_classes, logits, _MASKED_LOGIT)
            shifted = logits - jnp.max(logits, axis=1, keepdims=True)
            log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
            one_hot = (classes == labels_ref[...][:, None]).astype(jnp.float32)
            weights = weights_ref[...][:, None]
            loss_out[...] = jnp.full((1,), -jnp.sum(log_probs * one_hot * weights), jnp.float32)
            d_logits = (jnp.exp(log_probs) - one_hot) * weights  # (B, Cp); zero in padded classes

            # Each block of W's rows: the backward pass with the old rows, then their update.
            for columns in parts:
                pre = pre_ref[:, columns]
                kernel = kernel_ref[columns, :]  # (block, Cp)
                d_hidden = jnp.dot(d_logits, kernel.T, preferred_element_type=jnp.float32)
                d_pre_out[:, columns] = jnp.where(pre > 0, d_hidden, 0.0)
                grad = jnp.dot(jnp.maximum(pre, 0.0).T, d_logits, preferred_element_type=jnp.float32)
                old_trace = kernel_momentum_ref[columns, :] if with_momentum else None
                new_kernel, trace = sgd(kernel, grad, old_trace)
                kernel_out[columns, :] = new_kernel
                if with_momentum:
                    kernel_momentum_out[columns, :] = trace
            new_bias, trace = sgd(bias_ref[...], jnp.sum(d_logits, axis=0),
                                  bias_momentum_ref[...] if with_momentum else None)
            bias_out[...] = new_bias
            if with_momentum:
                bias_momentum_out[...] = trace

        @pl.when(training_ref[0] == 0)
        def _skip():
            loss_out[...] = jnp.zeros((1,), jnp.float32)
            d_pre_out[...] = jnp.zeros((batch, hidden), jnp.float32)

    squeezed = getattr(pl, "squeezed", None)
    per_head = pl.BlockSpec((1,), lambda head: (head,))
    shared = pl.BlockSpec((batch,), lambda head: (0,))
    activations = pl.BlockSpec((squeezed, batch, hidden), lambda head: (head, 0, 0))
    kernel_spec = pl.BlockSpec((squeezed, hidden, padded), lambda head: (head, 0, 0))
    bias_spec = pl.BlockSpec((squeezed, padded), lambda head: (head, 0))
    weight_specs = [kernel_spec, bias_spec] * (2 if with_momentum else 1)
    weight_shapes = [jax.ShapeDtypeStruct(output_kernel.shape, jnp.float32),
                     jax.ShapeDtypeStruct(output_bias.shape, jnp.float32)] * (2 if with_momentum else 1)
    # Operands 4, 5 (kernel, bias) and 6, 7 (their momentum) are updated in place: outputs 2...
    aliases = {4 + i: 2 + i for i in range(len(weight_specs))}
    call = fused_sgd.pallas_call(
        body,
        out_shape=[jax.ShapeDtypeStruct((num_heads,), jnp.float32),
                   jax.ShapeDtypeStruct(pre_activation.shape, jnp.float32), *weight_shapes],
        grid=(num_heads,),
        in_specs=[per_head, shared, shared, activations, *weight_specs],
        out_specs=[per_head, activations, *weight_specs],
        input_output_aliases=aliases,
        interpret=interpret,
        num_warps=num_warps,
        num_stages=1,
        name="fused_output_layer_step",
    )
    weights = [output_kernel, output_bias, *(momentum if with_momentum else ())]
    loss, d_pre_activation, *updated = call(
        training.astype(jnp.int32), labels.astype(jnp.int32), sample_weights.astype(jnp.float32),
        pre_activation, *weights,
    )
    new_momentum = (updated[2], updated[3]) if with_momentum else None
    return loss, d_pre_activation, updated[0], updated[1], new_momentum

