"""Deferred first-layer updates: a window of SGD steps that reads the first kernel once, not every step.

The idea alone, outside the trainer (which has it as ``trainer.DEFERRED_WINDOW``,
timed by ``step_profile.py``): a small program to measure and to read.

Each SGD step changes a head's first kernel by a rank-B matrix, the gradient
G_j = X_jᵀ D_j (inputs X_j (B, D), pre-activation gradient D_j (B, H)). With
optax's SGD and momentum (trace m = G + mu * m; Nesterov w -= lr * (G + mu * m),
else w -= lr * m), the weights and momentum after t steps of a window are
linear in the window's start and its gradients:

    m_t = mu^t m_0 + sum_k c[t, k] G_k,    w_t = w_0 - lr (a[t] m_0 + sum_k b[t, k] G_k),

with scalar tables a, b, c that depend only on mu, Nesterov and t
(``evojax_prune.deferred_sgd.coefficients`` derives them by running optax's
recurrence on symbols). So
step j's pre-activation, X_j w_j, needs no pass over the kernel:

    X_j w_j = X_j w_0 - lr (a[j] X_j m_0 + sum_{k<j} b[j, k] (X_j X_kᵀ) D_k),

where X_j w_0 and X_j m_0 are rows of one product of the window's L * B
inputs with [w_0 | m_0], made once at the window's start, and X_j X_kᵀ are
blocks of the window's Gram matrix (masked to the head's features). The
kernel and its momentum are written once, at the end of the window, by one
rank-(L * B) product. A window of L steps moves the weights 6 times (read
both for the products; read both and write both at the end) instead of 4 L
times; in exchange it does more arithmetic: per head and step about
2 B D (2 H) for the base products, 2 B (L B) D for the Gram matrix and
2 D B (2 H) at the end, against 4 B k H for the ordinary step (k kept
features), roughly 8x at k = D / 2. A GPU, memory-bound at 8 FLOPs per byte
of weights (``trainer_throughput.py``), has that arithmetic to spare; a CPU
does not.

Here a chunk of heads is stored dense, (K, D, H), with pruned rows zero
(masked inputs, masked updates), heads never stop, and windows are full; the
trainer would also need partial windows at epoch ends (the tables at the
window's real length) and stopped heads (their end-of-window update
discarded). Compared, side by side, per step:

  * ``sequential``: the ordinary step, dense and masked (the trainer's dense
    XLA formulation): forward product, loss, gradient product, optax update;
  * ``deferred``: windows of ``--windows`` lengths L.

The two must agree (checked in the run, and against each other in
tests/test_benchmarks.py on a CPU).

    python benchmarks/deferred_update.py --out /tmp/deferred.json          # on a GPU
    python benchmarks/deferred_update.py --heads 2 --features 64 --hidden 16 --steps 8   # CPU smoke
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, save

from evojax_prune import head, trainer
from evojax_prune.deferred_sgd import coefficients

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "deferred_update.json"
LEARNING_RATE, DECAY = 1e-3, 0.9


def _output_step(optimizer, params, output_state, pre_activation, labels, weights):
    """Loss and backward pass of the output layer (the trainer's own), and its optax update."""
    loss, d_pre_activation, output_grads = trainer._loss_and_backward(params, pre_activation, labels, weights)
    output_layer = (params.output_kernel, params.output_bias)
    updates, output_state = optimizer.update(output_grads, output_state, output_layer)
    output_kernel, output_bias = optax.apply_updates(output_layer, updates)
    params = params.replace(output_kernel=output_kernel, output_bias=output_bias)
    return loss, d_pre_activation, params, output_state


def sequential_steps(params, momentum, output_state, masks, x_steps, y_steps, *, learning_rate, decay,
                     nesterov):
    """Ordinary SGD steps of K dense masked heads, one per minibatch of ``x_steps`` (S, B, D).

    Returns the params, the hidden kernel's momentum, the output layer's optax
    state and the (S, K) minibatch losses.
    """
    optimizer = optax.sgd(learning_rate, momentum=decay or None, nesterov=nesterov)
    float_masks = masks.astype(jnp.float32)
    batch = x_steps.shape[1]

    def step(carry, data):
        params, momentum, output_state = carry
        x_batch, labels = data
        inputs = x_batch[None] * float_masks[:, None, :]  # (K, B, D)
        pre_activation = jnp.einsum("kbd,kdh->kbh", inputs, params.hidden_kernel)
        loss, d_pre, params, output_state = _output_step(
            optimizer, params, output_state, pre_activation, labels, jnp.ones((batch,), jnp.float32))
        grad = jnp.einsum("kbd,kbh->kdh", inputs, d_pre)
        if decay:
            momentum = grad + decay * momentum
            update = grad + decay * momentum if nesterov else momentum
        else:
            update = grad
        params = params.replace(hidden_kernel=params.hidden_kernel - learning_rate * update)
        return (params, momentum, output_state), loss

    (params, momentum, output_state), losses = jax.lax.scan(
        step, (params, momentum, output_state), (x_steps, y_steps))
    return params, momentum, output_state, losses


def deferred_window(params, momentum, output_state, masks, x_steps, y_steps, *, learning_rate, decay,
                    nesterov):
    """The same L steps as ``sequential_steps``, reading and writing the first kernel once.

    Args:
      params: K heads, hidden_kernel (K, D, H) with pruned rows zero.
      momentum: (K, D, H), the hidden kernel's SGD momentum (pruned rows zero).
      output_state: optax state of the output layer.
      masks: (K, D) bool.
      x_steps: (L, B, D) the window's minibatches; y_steps: (L, B) labels.

    Returns what ``sequential_steps`` returns.
    """
    window, batch, num_features = x_steps.shape
    a, b, m_decay, c = (jnp.asarray(table, jnp.float32) for table in coefficients(window, decay, nesterov))
    optimizer = optax.sgd(learning_rate, momentum=decay or None, nesterov=nesterov)
    float_masks = masks.astype(jnp.float32)
    # Each head's masked inputs, (K, L B, D), as the trainer does it (batched products only).
    rows = x_steps.reshape(window * batch, num_features)[None] * float_masks[:, None, :]
    hidden = params.hidden_kernel.shape[-1]
    # Once per window: the window's inputs times the starting weights and momentum, (K, L, B, H) each,
    # and each head's Gram matrix of the window's inputs over its kept features, (K, L, B, L, B).
    base = jnp.einsum("kid,kdh->kih", rows, jnp.concatenate([params.hidden_kernel, momentum], axis=-1))
    base = base.reshape(-1, window, batch, 2 * hidden)
    gram = jnp.einsum("kid,kjd->kij", rows, rows).reshape(-1, window, batch, window, batch)

    def step(carry, data):
        params, output_state, d_window = carry  # d_window: (K, L, B, H), zero for later steps
        j, labels = data
        corrections = jnp.einsum("kbmc,kmch->kbh", gram[:, j] * b[j][:, None], d_window)
        from_momentum = a[j] * base[:, j, :, hidden:]
        pre_activation = base[:, j, :, :hidden] - learning_rate * (from_momentum + corrections)
        loss, d_pre, params, output_state = _output_step(
            optimizer, params, output_state, pre_activation, labels, jnp.ones((batch,), jnp.float32))
        d_window = jax.lax.dynamic_update_index_in_dim(d_window, d_pre, j, axis=1)
        return (params, output_state, d_window), loss

    d_window = jnp.zeros((masks.shape[0], window, batch, hidden), jnp.float32)
    (params, output_state, d_window), losses = jax.lax.scan(
        step, (params, output_state, d_window), (jnp.arange(window), y_steps))
    # Once per window: both rank-(L B) sums of the gradients, masked to the kept rows.
    d_rows = d_window.reshape(-1, window * batch, hidden)
    scales = jnp.concatenate([jnp.repeat(b[window], batch), jnp.repeat(c[window], batch)])  # (2 L B,)
    sums = jnp.einsum("kid,kih->kdh", rows, d_rows * scales[:window * batch, None])
    sums_m = jnp.einsum("kid,kih->kdh", rows, d_rows * scales[window * batch:, None])
    hidden_kernel = params.hidden_kernel - learning_rate * (a[window] * momentum + sums)
    momentum = m_decay[window] * momentum + sums_m
    return params.replace(hidden_kernel=hidden_kernel), momentum, output_state, losses


def problem(heads: int, features: int, hidden: int, classes: int, batch: int, steps: int, seed: int = 0):
    """Authors'-initialisation masks, RPS-like inputs, shared initial heads; pruned rows zeroed."""
    rng = np.random.default_rng(seed)
    masks = rng.random((heads, features)) < rng.random((heads, 1))
    x_steps = rng.gamma(0.6, 0.8, size=(steps, batch, features)).astype(np.float32)
    y_steps = rng.integers(0, classes, size=(steps, batch)).astype(np.int32)
    init = head.init(jax.random.key(seed), features, classes, hidden)
    params = head.HeadParams(
        hidden_kernel=jnp.asarray(masks[:, :, None]) * init.hidden_kernel[None],
        output_kernel=jnp.broadcast_to(init.output_kernel, (heads, hidden, classes)),
        output_bias=jnp.broadcast_to(init.output_bias, (heads, classes)),
    )
    return params, jnp.asarray(masks), jnp.asarray(x_steps), jnp.asarray(y_steps)


def run(variant: str, window: int, params, masks, x_steps, y_steps, hyper: dict):
    """All the steps, in windows of ``window`` (deferred) or one by one (sequential)."""
    optimizer = optax.sgd(hyper["learning_rate"], momentum=hyper["decay"] or None, nesterov=hyper["nesterov"])
    output_state = optimizer.init((params.output_kernel, params.output_bias))
    momentum = jnp.zeros_like(params.hidden_kernel)
    if variant == "sequential":
        return sequential_steps(params, momentum, output_state, masks, x_steps, y_steps, **hyper)
    steps, batch, features = x_steps.shape
    x_windows = x_steps.reshape(steps // window, window, batch, features)
    y_windows = y_steps.reshape(steps // window, window, batch)

    def one_window(carry, data):
        params, momentum, output_state = carry
        params, momentum, output_state, losses = deferred_window(params, momentum, output_state, masks, *data,
                                                                 **hyper)
        return (params, momentum, output_state), losses

    (params, momentum, output_state), losses = jax.lax.scan(
        one_window, (params, momentum, output_state), (x_windows, y_windows))
    return params, momentum, output_state, losses.reshape(steps, -1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="a multiple of every window")
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    hyper = dict(learning_rate=LEARNING_RATE, decay=DECAY, nesterov=True)
    params, masks, x_steps, y_steps = problem(args.heads, args.features, args.hidden, args.classes,
                                              args.batch, args.steps)
    result = {"benchmark": "deferred_update", **environment(),
              "shapes": {"heads": args.heads, "features": args.features, "hidden": args.hidden,
                         "classes": args.classes, "batch": args.batch, "steps": args.steps,
                         "mean_kept_fraction": float(np.mean(masks))},
              "rows": []}
    reference = None
    windows = [window for window in args.windows if args.steps % window == 0]
    for variant, window in [("sequential", 1)] + [("deferred", window) for window in windows]:
        program = jax.jit(functools.partial(run, variant, window, hyper=hyper))
        trained = jax.block_until_ready(program(params, masks, x_steps, y_steps))
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            jax.block_until_ready(program(params, masks, x_steps, y_steps))
            best = min(best, time.perf_counter() - started)
        row = {"variant": variant, "window": window, "microseconds_per_step": best / args.steps * 1e6}
        if reference is None:
            reference = trained
        else:
            row["largest_loss_difference"] = float(jnp.max(jnp.abs(trained[3] - reference[3])))
            row["largest_kernel_difference"] = float(jnp.max(jnp.abs(
                trained[0].hidden_kernel - reference[0].hidden_kernel)))
            row["speedup_over_sequential"] = result["rows"][0]["microseconds_per_step"] / row[
                "microseconds_per_step"]
        compared = (f", {row['speedup_over_sequential']:.2f}x, losses within "
                    f"{row['largest_loss_difference']:.1e}") if "speedup_over_sequential" in row else ""
        print(f"{variant:10} L={window:3}: {row['microseconds_per_step']:9.1f} us per step{compared}",
              flush=True)
        result["rows"].append(row)
        save(args.out, result)
    return result


if __name__ == "__main__":
    main()
