"""Train a population of masked heads at once: one jitted call per generation.

Every candidate of a generation is the same network (``head.py``) with a
different feature mask, trained on the same features. The trainer trains all of
them in one jitted call:

  * ``vmap``-style batching over the K heads of a chunk: the minibatch is shared,
    so the first layer of the chunk is one batched matrix product,
    ``einsum('kbd,kdh->kbh', x_batch * mask, hidden_kernel)``;
  * ``scan`` over the minibatches of an epoch;
  * ``while_loop`` over epochs, until every head of the chunk has stopped early
    or ``max_epochs`` is reached;
  * a ``fori_loop`` over chunks of heads, so memory is bounded by the chunk, not
    by the population (each chunk writes its results in place);
  * ``shard_map`` over the devices (``devices.py``): each device runs all of the
    above on its block of the population, the data replicated.

Pruned features are skipped, not multiplied by zero (``gather_features``): a
head keeping k of D features only needs k rows of its first kernel, so each
chunk is trained on the kept columns alone, ``x_batch[:, index]``. How the kept
rows are stored is the chunk's ``ChunkLayout``. A chunk of one head (the CPU
default) pads them to a capacity c from a short ladder (``capacity_levels``:
multiples of D / 16), and on a CPU stores its kernel as (H, c) while training,
which XLA's CPU products run 1.05-1.09x faster (``stores_kernel_transposed``).
A larger chunk (accelerators) packs them in tiles of
D / 16 rows, each head owning ceil(k / tile) tiles, the first layer's product
summed over a head's tiles (``segment_sum``); the chunk's tile count is padded
to one of 8 levels. Packing matters when a chunk mixes small and large heads,
as a search generation trained as one chunk does: every head padded to the
widest head's capacity trained 32 authors'-initialisation heads in 27.3 s on
the CPU (one epoch, one chunk), packed in 10.9 s. Heads are sorted by their
feature count so that a chunk holds heads of similar size, and ``lax.switch``
picks the chunk's layout on the device, so the call is compiled once per
population shape (one branch per layout: compile time grows with the ladder).
The first layer's work and the optimizer's pass over the weights shrink by c / D. On a
GPU a packed chunk trained with ``sgd`` runs its first layer's step as one Pallas
kernel (``fused_sgd.sgd_step``: the gradient, the SGD update and the next
minibatch's forward product, so the kernel is read and written once per step and
stopped heads are skipped; ``TrainConfig.fused_update``); the scan then carries
each tile's forward product from one step to the next. Variants of the step that
were never measured on their target (the kernel by head, a fused output layer,
deferred first-layer updates) were removed; the tag ``pre-variant-removal``
holds them, for a session with a GPU to bring back with a benchmark. Packing is
exact for optimizers that update every weight from its own gradient history
(``ROW_SEPARABLE_OPTIMIZERS``): a pruned row gets a zero gradient and so never
moves; other optimizers (weight decay, layer-wise trust ratios, factored
moments) train the dense kernel. Results equal the dense formulation's up to
float32 reassociation (tests/test_trainer.py checks both against a reference).

Measured on a 2-core CPU (paper's head, N = 2520, batch 32, SGD): 8 heads with
the authors' initial masks (39% of features kept on average) trained at
2.5 ms per head-step gathered against 7.1 ms dense, chunks of one head each
(benchmarks/trainer_throughput.py gives the numbers and the comparison with
Keras). The kernel gradient is written out by hand
(``population_loss_and_grads``) because ``jax.grad`` of a ``vmap`` left it in a
transposed layout that cost 4x on CPU.

The training protocol is the authors' (PROTOCOL.md, "Training one candidate"),
with Keras semantics where Keras defines it:

  * the last partial minibatch is used; its loss is the mean over its real
    samples (the batch is padded to a static shape and the padding has weight 0);
  * the epoch loss is Keras' running ``Mean`` of the batch losses weighted by the
    batch size, i.e. the mean per-sample loss seen during the epoch (it differs
    from an unweighted mean of batch losses only through the last batch);
  * early stopping is Keras' ``EarlyStopping(monitor="loss")``: an epoch improves
    when its loss is below ``best - min_delta``; a head stops once ``patience``
    epochs pass without improvement; with ``restore_best`` it gets back the
    weights from the end of its best epoch (Keras 3 restores them also when
    ``max_epochs`` ends training);
  * a stopped head stops changing.

Determinism: every head starts from the same initial weights and sees the same
minibatch order (the permutation of epoch ``e`` is drawn from
``fold_in(order_key, e)``), so a head's result is a function of its mask, the
data, the configuration and the key alone, whatever the population size, the
head's position in it, or the chunking, up to floating-point reassociation (the
matrix products of different shapes may sum in a different order).

Differences from the authors' Keras code, on purpose: the loss is the exact
softmax cross-entropy on logits (Keras clips probabilities to [1e-7, 1 - 1e-7]
first), and Keras' SGD ``decay=1e-6`` is not applied (PROTOCOL.md: negligible).

Reference: Poyatos et al., MO-EvoPruneDeepTL, arXiv 2302.10253.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from evojax_prune import devices, fused_sgd, head
from evojax_prune.config import RunConfig, TrainConfig

_FLOAT_BYTES = 4

# Optimizers whose update of a weight depends only on that weight's own gradient
# history (no weight decay, no norms over a layer, no factored moments): a weight
# whose gradient is always zero never moves, so training only the kept rows of
# the first kernel is the same as training the masked dense kernel.
ROW_SEPARABLE_OPTIMIZERS = frozenset(
    {"sgd", "adam", "nadam", "adamax", "amsgrad", "rmsprop", "adagrad", "adabelief", "yogi"}
)

# Capacities of the gathered first layer: multiples of D / _CAPACITY_LEVELS,
# rounded up to _CAPACITY_ALIGN, and at least _CAPACITY_MIN_STEP apart. More
# levels waste less padding but each adds one compiled branch (seconds of XLA
# compile), which small D does not repay.
_CAPACITY_LEVELS = 8
_CAPACITY_ALIGN = 8
_CAPACITY_MIN_STEP = 32
# Chunks of one head (a CPU's) get a ladder twice as fine: half the padding for
# twice the branches. On this project's 2-core CPU, 4 and 16 heads of the authors'
# initial masks, 2 epochs at RPS shapes: 1.07-1.11x faster, compile 4.3 -> 6.9 s
# (benchmarks/cpu_step_layouts.py --trainer-populations compares). Packed chunks keep
# the 8 levels: their tiles, and the fused kernels' blocks, are sized from them.
_ONE_HEAD_CAPACITY_LEVELS = 16

# A head whose lowest epoch loss is above this many times log(C), the loss of a uniform
# guess, diverged (as one whose loss is not finite at some epoch): its right class gets a
# mean probability below C^-10. Learning rate 1e4 on the digits gives losses near 1e4; a
# head that learns nothing (features without signal) stays near log(C).
DIVERGED_LOSS = 10.0

# Most heads an automatically sized chunk holds on an accelerator. On an H100 (jax
# 0.11.2) packed chunks of 64 heads failed: XLA's scatter for the tiles' segment_sum
# could not launch ("CUDA_ERROR_OUT_OF_MEMORY") with XLA holding its default 75% of
# the memory, and ran 48x slower per head than chunks of 32 without preallocation.
# Chunks of 32 trained P = 256 at 2,064 head-epochs/s. (Whether chunks of 64 pay
# with the tiles summed by gathering, ``TILE_SUM``, is unmeasured.) A population up to
# a quarter above the cap stays one chunk (``choose_chunk_size``): the authors' budget
# run generationally trains generations of 34 offspring, which the cap alone split into
# two chunks of 17 run one after the other; packed chunks of 30-34 heads ran on an H200.
MAX_HEADS_PER_CHUNK = 32

# How a packed chunk sums each head's tiles' forward products: "gather" (each head
# gathers its at most D / r tiles and sums them in order) or "scatter"
# (``segment_sum``); None: gather on a GPU, scatter elsewhere. On a GPU XLA's scatter
# adds with atomics, in no fixed order, so the same seed could give other weights
# from run to run; the gather sums in a fixed order. The GPU figures of
# 2026-11-26 were measured with the scatter; the gather's cost there is
# unmeasured (step_profile.py compares the two). Read when a program is traced.
TILE_SUM = None



def stores_kernel_transposed(layout: ChunkLayout, platform: str | None = None) -> bool:
    """Whether a chunk stored as ``layout`` keeps its first kernel as (K, H, c) while training.

    Chunks whose rows are per head (not packed) on a CPU
    (``platform``, default ``jax.default_backend()``): XLA's CPU backend runs
    the step's two products faster with the kernel's rows contiguous along
    the contraction: 1.07x at 768 kept rows and 1.10-1.18x at 1,792 for a copy
    of the step (``benchmarks/cpu_step_layouts.py``), 1.05-1.09x for the
    trainer on 4 and 16 heads of the authors' initial masks, with the same
    weights. The trained heads come back as (K, D, H) either way. Unmeasured
    on a GPU, where the packed layout and its fused kernel read (T, r, H).
    """
    return layout.per_head and (platform or jax.default_backend()) == "cpu"


def tile_sum_method(platform: str | None = None) -> str:
    """``TILE_SUM``, or its default for ``platform`` (default ``jax.default_backend()``)."""
    return TILE_SUM or ("gather" if (platform or jax.default_backend()) == "gpu" else "scatter")


@struct.dataclass
class TrainedPopulation:
    """The outcome of ``train_population`` for P heads, all device arrays.

    Attributes:
      params: ``HeadParams`` stacked on a leading P axis: hidden_kernel
        (P, D, H), output_kernel (P, H, C), output_bias (P, C), float32. With
        ``restore_best`` the weights from the end of each head's best epoch,
        else its last weights. Rows of pruned features keep their initial
        values (they never influence the logits).
      epochs: (P,) int32, epochs each head ran before it stopped.
      final_loss: (P,) float32, the training loss of the epoch whose weights are
        returned (the best epoch with ``restore_best``, else the last one).
      best_loss: (P,) float32, the lowest epoch training loss seen (``inf`` if
        no epoch had a finite loss).
      best_epoch: (P,) int32, the 0-based epoch whose weights were kept as best.
      diverged: (P,) bool, the training loss was not finite at some epoch or
        never fell to ``DIVERGED_LOSS`` times log(C), the loss of a uniform
        guess (a learning rate far too high for the data, as a rule); such a
        head's weights and metrics mean nothing.
    """

    params: head.HeadParams
    epochs: jax.Array
    final_loss: jax.Array
    best_loss: jax.Array
    best_epoch: jax.Array
    diverged: jax.Array


@struct.dataclass
class _ChunkState:
    """The ``while_loop`` carry for a chunk of K heads (leading axis K)."""

    epoch: jax.Array  # () int32, next epoch to run
    params: head.HeadParams  # hidden_kernel (K, c, H), the kept rows only; (K, H, c) if transposed
    opt_state: Any
    best_params: Any  # HeadParams like params, or () when weights are not restored
    running: jax.Array  # (K,) bool, still training
    wait: jax.Array  # (K,) int32, epochs since the last improvement
    epochs: jax.Array  # (K,) int32
    best_loss: jax.Array  # (K,) float32
    best_epoch: jax.Array  # (K,) int32
    kept_loss: jax.Array  # (K,) float32, loss of the epoch whose weights are kept
    diverged: jax.Array  # (K,) bool, some epoch's loss was not finite


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer named by ``train_config.optimizer``.

    ``sgd`` is ``optax.sgd(learning_rate, momentum, nesterov)`` (the paper's
    Keras SGD); any other name is ``getattr(optax, name)(learning_rate,
    **optimizer_options)``.
    """
    options = dict(train_config.optimizer_options)
    if train_config.optimizer == "sgd":
        return optax.sgd(
            train_config.learning_rate,
            momentum=train_config.momentum or None,
            nesterov=train_config.nesterov,
            **options,
        )
    return getattr(optax, train_config.optimizer)(train_config.learning_rate, **options)


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


def population_loss_and_grads(
    params: head.HeadParams,
    inputs: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    tile_head: jax.Array | None = None,
    sum_tiles: Any = None,
    kernel_transposed: bool = False,
) -> tuple[jax.Array, head.HeadParams]:
    """Softmax cross-entropy of K heads on one minibatch, and its gradients.

    The backward pass is written out rather than taken with ``jax.grad`` of a
    ``vmap``: autodiff there emits the kernel gradient as (K, H, c) followed by
    a transpose, which XLA on CPU fuses into the optimizer update as a strided
    read, four times slower per step (16 ms vs 4 ms for the paper's head).
    Here every product comes out in the layout its consumer reads.

    Args:
      params: K heads, hidden_kernel (K, c, H), output_kernel (K, H, C),
        output_bias (K, C), float32. With ``tile_head``, hidden_kernel is
        (T, r, H) instead: T tiles of r kept rows, packed across the heads.
      inputs: (K, B, c) float32, each head's first-layer input: the minibatch
        times the mask, or the kept columns of the minibatch; with
        ``tile_head``, (T, B, r), each tile's columns.
      labels: (B,) int32 class indices.
      weights: (B,) float32, 1 for a real sample and 0 for padding.
      tile_head: (T,) int32, sorted, the head each tile belongs to (K: an
        unused tile). A head's first layer is the sum of its tiles' products.
      sum_tiles: (T, B, H) -> (K, B, H), that sum; given with ``tile_head``.
      kernel_transposed: hidden_kernel is (K, H, c), and so is its gradient
        (``stores_kernel_transposed``).

    Returns:
      loss: (K,) float32, sum(weights * cross-entropy) / sum(weights) per head.
      grads: ``HeadParams`` shaped like ``params``.
    """
    first_layer = "kbc,khc->kbh" if kernel_transposed else "kbc,kch->kbh"
    pre_activation = jnp.einsum(first_layer, inputs, params.hidden_kernel)
    if tile_head is not None:  # (T, B, H) partial products -> (K, B, H); unused tiles dropped
        pre_activation = sum_tiles(pre_activation)
    loss, d_pre_activation, output_grads = _loss_and_backward(params, pre_activation, labels, weights)
    if tile_head is not None:  # each tile gets its head's gradient (unused tiles: zero inputs)
        d_pre_activation = jnp.take(d_pre_activation, tile_head, axis=0, mode="clip")
    if kernel_transposed:
        hidden_kernel_grad = jnp.einsum("kbh,kbc->khc", d_pre_activation, inputs)
    else:
        hidden_kernel_grad = jnp.einsum("kbc,kbh->kch", inputs, d_pre_activation)
    return loss, head.HeadParams(hidden_kernel_grad, *output_grads)


def _loss_and_backward(
    params: head.HeadParams, pre_activation: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array]]:
    """The heads' loss from their first layer's (K, B, H) pre-activation, and the backward pass to it.

    Returns the (K,) loss, the (K, B, H) gradient with respect to the
    pre-activation, and the gradients of the output kernel (K, H, C) and
    bias (K, C).
    """
    hidden = jax.nn.relu(pre_activation)
    logits = jnp.einsum("kbh,khc->kbc", hidden, params.output_kernel) + params.output_bias[:, None, :]
    log_probs = jax.nn.log_softmax(logits)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    sample_weights = weights / jnp.sum(weights)  # (B,): the mean over real samples
    loss = -jnp.einsum("kbc,bc,b->k", log_probs, one_hot, sample_weights)

    d_logits = (jnp.exp(log_probs) - one_hot) * sample_weights[:, None]  # (K, B, C)
    d_hidden = jnp.einsum("kbc,khc->kbh", d_logits, params.output_kernel)
    d_pre_activation = jnp.where(pre_activation > 0, d_hidden, 0.0)
    output_grads = (jnp.einsum("kbh,kbc->khc", hidden, d_logits), jnp.sum(d_logits, axis=1))
    return loss, d_pre_activation, output_grads


def capacity_levels(num_features: int, num_levels: int = _CAPACITY_LEVELS) -> tuple[int, ...]:
    """First-layer widths a chunk of heads can be trained at, the last one D.

    Multiples of D / ``num_levels`` rounded up to a multiple of 8, and at least
    32 apart: a head keeping k features is padded to the smallest level >= k,
    wasting at most max(D / num_levels, 32) rows. D <= 32 gives the single
    level D (no gathering).
    """
    step = -(-num_features // num_levels)
    step = max(-(-step // _CAPACITY_ALIGN) * _CAPACITY_ALIGN, _CAPACITY_MIN_STEP)
    levels = {min(level * step, num_features) for level in range(1, num_levels + 1)}
    return tuple(sorted(levels | {num_features}))


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """How a chunk of K heads stores its first layer: ``num_tiles`` tiles of ``tile_rows`` rows.

    ``per_head``: one tile per head (``num_tiles`` = K), each head padded to
    the chunk's capacity ``tile_rows`` (D: the dense kernel). Otherwise the
    tiles are packed: head k owns ceil(k_kept / tile_rows) consecutive tiles,
    so a head is padded to a multiple of ``tile_rows``, not to the largest
    head of its chunk, and the chunk to ``num_tiles`` tiles in all.
    """

    tile_rows: int
    num_tiles: int
    per_head: bool


def chunk_layouts(num_features: int, chunk_size: int, gather: bool) -> tuple[ChunkLayout, ...]:
    """The layouts a chunk may be trained in, smallest first (one compiled branch each).

    Dense (``gather`` off, or D too small to gather): the one layout (D, K).
    Chunks of one head: the head's kept rows padded to a capacity from
    ``capacity_levels`` with ``_ONE_HEAD_CAPACITY_LEVELS``. Larger chunks
    (accelerators) pack tiles of half a capacity step of the 8 levels: a
    chunk mixing heads of 100 and 2,000 kept features (a
    generation of the search, trained as one chunk) trains about the sum of
    their widths, not K times the widest; its tile count is padded to one of
    8 levels, multiples of K * ceil(D / tile_rows) / 8.
    """
    capacities = capacity_levels(num_features)
    if not gather or capacities == (num_features,):
        return (ChunkLayout(num_features, chunk_size, per_head=True),)
    if chunk_size == 1:
        capacities = capacity_levels(num_features, _ONE_HEAD_CAPACITY_LEVELS)
        return tuple(ChunkLayout(capacity, 1, per_head=True) for capacity in capacities)
    tile_rows = max(capacities[0] // 2, _CAPACITY_ALIGN)
    most = chunk_size * -(-num_features // tile_rows)
    levels = sorted({-(-most * level // _CAPACITY_LEVELS) for level in range(1, _CAPACITY_LEVELS + 1)})
    return tuple(ChunkLayout(tile_rows, tiles, per_head=False) for tiles in levels)


def layout_level(layouts: tuple[ChunkLayout, ...], counts: jax.Array) -> jax.Array:
    """Index of the smallest layout that holds a chunk whose heads keep ``counts`` (K,) features.

    Padding heads count -1 (they keep nothing).
    """
    if layouts[0].per_head:
        return jnp.searchsorted(jnp.asarray([layout.tile_rows for layout in layouts]), jnp.max(counts))
    tiles = jnp.sum(-(-jnp.maximum(counts, 0) // layouts[0].tile_rows))
    return jnp.searchsorted(jnp.asarray([layout.num_tiles for layout in layouts]), tiles)


def _tree_bytes(tree: Any) -> int:
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def bytes_per_head(num_features: int, num_classes: int, hidden: int, train_config: TrainConfig) -> int:
    """Estimated device memory one head needs while it trains (dense upper bound).

    Parameters (D*H + H*C + C floats), the optimizer state (``optax`` tells its
    shapes: one more copy of the parameters for SGD with momentum, two for
    Adam), the best-weights copy (with ``restore_best``), the gradient, the
    update and the returned full-width kernel (one copy each) and the
    activations of one minibatch (the masked input B*D, a few B*H hidden
    buffers and B*C logits).
    """
    params = jax.eval_shape(lambda: head.init(jax.random.key(0), num_features, num_classes, hidden))
    opt_state = jax.eval_shape(make_optimizer(train_config).init, params)
    param_bytes = _tree_bytes(params)
    copies = 4 + int(train_config.restore_best)  # params, gradient, update, output, best
    batch = train_config.batch_size
    activations = batch * (num_features + 4 * hidden + 4 * num_classes) * _FLOAT_BYTES
    return copies * param_bytes + _tree_bytes(opt_state) + activations


def choose_chunk_size(
    population: int,
    num_features: int,
    num_classes: int,
    hidden: int,
    train_config: TrainConfig,
    platform: str | None = None,
) -> int:
    """Heads trained at once (batched) inside one chunk.

    ``train_config.chunk_size`` if set (capped at the population). Otherwise, on
    a CPU (``platform``, default ``jax.default_backend()``), 1: one head's
    matrix products already keep every core busy, so batching heads adds no
    parallelism, while a larger chunk pushes the weights out of cache, trains
    every head of the chunk at its largest head's capacity and keeps stopped
    heads riding along (2 cores, 8 heads gathered: 2.5 ms per head-step with
    chunks of 1, 4.1 with 2, 7.2 with 8). On an accelerator, as many heads as
    ``memory_budget_mb`` allows per ``bytes_per_head``, balanced so that the
    last chunk is nearly full (P = 100 with room for 80 gives 2 chunks of 50,
    not 80 + 20 padded to 160), and at most ``MAX_HEADS_PER_CHUNK``, except
    that a population at most a quarter above that cap (a search generation of
    up to 40 heads) trains as one chunk rather than two half-empty ones.
    """
    if train_config.chunk_size is not None:
        return max(1, min(train_config.chunk_size, population))
    if (platform or jax.default_backend()) == "cpu":
        return 1
    per_head = bytes_per_head(num_features, num_classes, hidden, train_config)
    memory_fits = max(1, int(train_config.memory_budget_mb * 2**20 // per_head))
    if population <= min(memory_fits, MAX_HEADS_PER_CHUNK + MAX_HEADS_PER_CHUNK // 4):
        return population
    fits = min(memory_fits, MAX_HEADS_PER_CHUNK)
    num_chunks = -(-population // fits)
    return -(-population // num_chunks)


def fused_update_applies(
    train_config: TrainConfig, layout: ChunkLayout, hidden: int, platform: str | None = None
) -> bool:
    """Whether a chunk stored as ``layout`` trains its first layer with ``fused_sgd.sgd_step``.

    Only packed layouts (chunks of several heads) and plain ``sgd`` (momentum
    and Nesterov allowed, no extra options). ``train_config.fused_update``
    None: on a GPU (``platform``, default ``jax.default_backend()``) when
    Triton can compile the shapes; True: also elsewhere, interpreted, and an
    error when a GPU cannot compile them; False: never.
    """
    wanted = train_config.fused_update
    plain_sgd = train_config.optimizer == "sgd" and not train_config.optimizer_options
    if wanted is False or layout.per_head or not plain_sgd:
        return False
    on_gpu = (platform or jax.default_backend()) == "gpu"
    if not on_gpu:
        return bool(wanted)
    problem = fused_sgd.supported(layout.tile_rows, train_config.batch_size, hidden)
    if problem and wanted:
        raise ValueError(f"TrainConfig.fused_update: the fused kernel cannot compile this chunk: {problem}")
    return problem is None


def _repeat(array: jax.Array, times: int) -> jax.Array:
    """(...) -> (times, ...): the same initial weights for every head."""
    return jnp.broadcast_to(array, (times, *array.shape))


def _expand(flags: jax.Array, like: jax.Array) -> jax.Array:
    """(K,) -> broadcastable against ``like`` (K, ...)."""
    return flags.reshape(flags.shape + (1,) * (like.ndim - 1))


def _train_chunk(
    init_params: head.HeadParams,
    masks: jax.Array,
    valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    orders: jax.Array,
    *,
    train_config: TrainConfig,
    layout: ChunkLayout,
) -> TrainedPopulation:
    """Train K heads together (see ``train_population``).

    ``masks`` (K, D) bool, ``valid`` (K,) bool marks real heads (padding heads
    never run), ``x`` (N, D + 1) float32 with a trailing zero column that padded
    feature indices point at, ``y`` (N,) int32, ``orders`` (max_epochs, N) the
    epochs' sample orders. Unless ``layout`` is dense, the heads train on their
    kept columns only, stored as ``layout`` says (the masks must fit it).
    """
    num_heads, num_features = masks.shape
    num_samples = x.shape[0]
    optimizer = make_optimizer(train_config)
    restore_best = train_config.restore_best
    rows, num_tiles, packed = layout.tile_rows, layout.num_tiles, not layout.per_head
    gather = packed or rows < num_features
    counts = jnp.where(valid, jnp.sum(masks, axis=1), 0)  # padding heads take no rows

    if packed:
        # Head k owns tiles [start_k, end_k); tile t holds rows offset_t ... offset_t + r - 1 of
        # its head's kept features. Tiles past the last head belong to "head K": never used.
        tiles_per_head = -(-counts // rows)
        tile_end = jnp.cumsum(tiles_per_head)
        tile_head = jnp.searchsorted(tile_end, jnp.arange(num_tiles), side="right").astype(jnp.int32)
        owner = jnp.minimum(tile_head, num_heads - 1)
        tile_start = tile_end - tiles_per_head
        offset = (jnp.arange(num_tiles) - tile_start[owner]) * rows
    else:
        tile_head, owner, offset = None, jnp.arange(num_heads), jnp.zeros((num_heads,), jnp.int32)

    def sum_tiles_packed(products):  # (tiles, B, H) -> (K, B, H): each head's sum over its tiles
        if tile_sum_method() == "gather":
            most = -(-num_features // rows)  # tiles of the widest head
            place = jnp.arange(most)
            tiles = jnp.minimum(tile_start[:, None] + place, num_tiles - 1)  # (K, most)
            own = place < (-(-counts // rows))[:, None]
            return jnp.sum(jnp.where(own[:, :, None, None], products[tiles], 0.0), axis=1)
        return jax.ops.segment_sum(products, tile_head, num_segments=num_heads, indices_are_sorted=True)

    sum_tiles = sum_tiles_packed if packed else None

    def per_tile(flags):  # (K,) bool -> one flag per row of the first kernel: (K,) or (tiles,)
        return flags if tile_head is None else jnp.take(flags, tile_head, mode="fill", fill_value=False)

    if gather:
        position = offset[:, None] + jnp.arange(rows)  # (tiles, r): places in the owner's kept list
        kept_first = jnp.argsort(~masks, axis=1, stable=True).astype(jnp.int32)  # (K, D)
        kept = jnp.take_along_axis(kept_first[owner], jnp.minimum(position, num_features - 1), axis=1)
        # A tile past the last head's starts beyond that head's count, so it is all padding too.
        index = jnp.where(position < counts[owner][:, None], kept, num_features)  # (tiles, r), padding = D
        # Row D of the padded kernel is zero; padded rows see zero inputs and stay so.
        padded_kernel = jnp.concatenate(
            [init_params.hidden_kernel, jnp.zeros_like(init_params.hidden_kernel[:1])]
        )
        hidden_kernel = padded_kernel[index]  # (tiles, r, H)

        def first_layer_inputs(x_batch):  # (B, D + 1) -> (tiles, B, r)
            return jax.vmap(lambda columns: x_batch[:, columns])(index)
    else:
        hidden_kernel = _repeat(init_params.hidden_kernel, num_heads)
        float_masks = masks.astype(x.dtype)

        def first_layer_inputs(x_batch):  # (B, D + 1) -> (K, B, D)
            return x_batch[None, :, :num_features] * float_masks[:, None, :]

    params = head.HeadParams(
        hidden_kernel=hidden_kernel,
        output_kernel=_repeat(init_params.output_kernel, num_heads),
        output_bias=_repeat(init_params.output_bias, num_heads),
    )
    hidden_units, num_classes = init_params.output_kernel.shape
    fused = fused_update_applies(train_config, layout, hidden_units)
    transposed = stores_kernel_transposed(layout)
    if transposed:  # (K, H, c) while training, back to (K, c, H) below
        params = params.replace(hidden_kernel=jnp.swapaxes(params.hidden_kernel, 1, 2))
    # Packed tiles do not line up with heads, so the optimizer runs on the whole chunk
    # at once; packing is only used with ROW_SEPARABLE_OPTIMIZERS, for which this is
    # the same computation as one optimizer per head.
    init_optimizer, update = (optimizer.init, optimizer.update) if packed else (
        jax.vmap(optimizer.init), jax.vmap(optimizer.update)
    )
    if fused:
        # The first kernel's optimizer is the fused kernel (its momentum kept here, None
        # without); optax updates the output layer.
        momentum = jnp.zeros_like(params.hidden_kernel) if train_config.momentum else None
        opt_state = (init_optimizer((params.output_kernel, params.output_bias)), momentum)
    else:
        opt_state = init_optimizer(params)

    def per_leaf(flags):  # (K,) bool -> HeadParams of flags broadcastable against each leaf
        return head.HeadParams(hidden_kernel=per_tile(flags), output_kernel=flags, output_bias=flags)

    def masked(updates, flags):  # a stopped head must not change; its optimizer state may
        return jax.tree.map(lambda u, on: jnp.where(_expand(on, u), u, 0.0), updates, flags)

    def step(carry, batch, *, running):  # running: per_leaf flags
        params, opt_state = carry
        batch_indices, batch_weights = batch
        inputs = first_layer_inputs(x[batch_indices])
        losses, grads = population_loss_and_grads(
            params, inputs, y[batch_indices], batch_weights, tile_head, sum_tiles, transposed
        )
        updates, opt_state = update(grads, opt_state, params)
        return (optax.apply_updates(params, masked(updates, running)), opt_state), losses

    def fused_step(carry, batch, *, running):  # running: per_leaf flags
        # The carry holds this minibatch's first-layer products, per tile, computed by the
        # previous step's kernel with the weights this step starts from.
        params, (output_state, momentum), products = carry
        batch_indices, batch_weights, next_indices = batch
        x_batch = x[batch_indices]
        losses, d_pre_activation, output_grads = _loss_and_backward(
            params, sum_tiles(products), y[batch_indices], batch_weights
        )
        hidden_kernel, momentum, products = fused_sgd.sgd_step(
            params.hidden_kernel, momentum, x_batch.T[index],
            jnp.take(d_pre_activation, tile_head, axis=0, mode="clip"),  # (tiles, B, H)
            first_layer_inputs(x[next_indices]), running.hidden_kernel,
            learning_rate=train_config.learning_rate, decay=train_config.momentum,
            nesterov=train_config.nesterov,
        )
        output_params = (params.output_kernel, params.output_bias)
        updates, output_state = update(output_grads, output_state, output_params)
        updates = masked(updates, (running.output_kernel, running.output_bias))
        output_kernel, output_bias = optax.apply_updates(output_params, updates)
        params = head.HeadParams(hidden_kernel, output_kernel, output_bias)
        return (params, (output_state, momentum), products), losses

    def train_epoch(params, opt_state, indices, weights, running):
        """One pass over the minibatches ``indices`` (S, B); returns the (S, K) batch losses."""
        running = per_leaf(running)  # once per epoch, not per step
        if not fused:
            return jax.lax.scan(functools.partial(step, running=running), (params, opt_state),
                                (indices, weights))
        # The first minibatch's products; the last step's "next" products (of the first
        # minibatch again) are dropped.
        products = jnp.einsum("tbr,trh->tbh", first_layer_inputs(x[indices[0]]), params.hidden_kernel)
        next_indices = jnp.roll(indices, -1, axis=0)
        (params, opt_state, _), losses = jax.lax.scan(
            functools.partial(fused_step, running=running), (params, opt_state, products),
            (indices, weights, next_indices),
        )
        return (params, opt_state), losses

    def run_epoch(state: _ChunkState) -> _ChunkState:
        indices, weights = epoch_batches(orders[state.epoch], train_config.batch_size)
        running = state.running
        (params, opt_state), losses = train_epoch(state.params, state.opt_state, indices, weights, running)
        # Keras' epoch loss: the batch losses weighted by the batch sizes.
        epoch_loss = jnp.sum(losses * jnp.sum(weights, axis=1)[:, None], axis=0) / num_samples

        improved = running & (epoch_loss < state.best_loss - train_config.min_delta)
        # Keras keeps the first epoch's weights even when its loss is not finite.
        keep = improved | (running & (state.epoch == 0))
        wait = jnp.where(running, jnp.where(improved, 0, state.wait + 1), state.wait)
        stop = running & (wait >= train_config.patience) & (state.epoch > 0)
        if restore_best:
            best_params = jax.tree.map(
                lambda new, old, on: jnp.where(_expand(on, new), new, old),
                params,
                state.best_params,
                per_leaf(keep),
            )
            kept_loss = jnp.where(keep, epoch_loss, state.kept_loss)
        else:
            best_params = ()
            kept_loss = jnp.where(running, epoch_loss, state.kept_loss)
        return _ChunkState(
            epoch=state.epoch + 1,
            params=params,
            opt_state=opt_state,
            best_params=best_params,
            running=running & ~stop,
            wait=wait,
            epochs=jnp.where(running, state.epoch + 1, state.epochs),
            best_loss=jnp.where(improved, epoch_loss, state.best_loss),
            best_epoch=jnp.where(keep, state.epoch, state.best_epoch),
            kept_loss=kept_loss,
            diverged=state.diverged | (running & ~jnp.isfinite(epoch_loss)),
        )

    def keep_going(state: _ChunkState) -> jax.Array:
        return (state.epoch < train_config.max_epochs) & jnp.any(state.running)

    zeros = jnp.zeros((num_heads,), jnp.int32)
    infinities = jnp.full((num_heads,), jnp.inf, jnp.float32)
    state = _ChunkState(
        epoch=jnp.int32(0),
        params=params,
        opt_state=opt_state,
        best_params=params if restore_best else (),
        running=valid,
        wait=zeros,
        epochs=zeros,
        best_loss=infinities,
        best_epoch=zeros,
        kept_loss=infinities,
        diverged=jnp.zeros((num_heads,), bool),
    )
    state = jax.lax.while_loop(keep_going, run_epoch, state)
    trained = state.best_params if restore_best else state.params
    if transposed:
        trained = trained.replace(hidden_kernel=jnp.swapaxes(trained.hidden_kernel, 1, 2))
    if gather:
        # Back to (K, D, H): kept rows trained, pruned rows at their initial values.
        # Kept feature d is number cumsum(mask)[d] - 1 of its head's kept list, which sits
        # in the head's tile of that number // r (the head's only tile when not packed).
        place = jnp.maximum(jnp.cumsum(masks, axis=1) - 1, 0)  # (K, D)
        tile = place // rows + (tile_start[:, None] if packed else jnp.arange(num_heads)[:, None])
        tile = jnp.minimum(tile, num_tiles - 1)
        kept_rows = trained.hidden_kernel[tile, place % rows]
        trained = trained.replace(
            hidden_kernel=jnp.where(
                (masks & valid[:, None])[:, :, None], kept_rows, init_params.hidden_kernel[None]
            )
        )
    return TrainedPopulation(
        params=trained,
        epochs=state.epochs,
        final_loss=state.kept_loss,
        best_loss=state.best_loss,
        best_epoch=state.best_epoch,
        # A learning rate far too high gives losses in the thousands, finite but as meaningless
        # as a NaN.
        diverged=state.diverged | ~(state.best_loss <= DIVERGED_LOSS * math.log(num_classes)),
    )


@functools.partial(
    jax.jit, static_argnames=("num_features", "num_classes", "hidden", "num_epochs", "num_samples")
)
def _initial_weights_and_orders(
    key: jax.Array, *, num_features: int, num_classes: int, hidden: int, num_epochs: int, num_samples: int
) -> tuple[head.HeadParams, jax.Array]:
    """The shared initial weights and every epoch's sample order, from ``split(key)``.

    A jitted call of its own, so that the random-number code (slow for XLA to
    compile) is compiled once per shape, not into every training program.
    """
    init_key, order_key = jax.random.split(key)
    init_params = head.init(init_key, num_features, num_classes, hidden)
    return init_params, epoch_orders(order_key, num_epochs, num_samples)


def _train_local(
    init_params: head.HeadParams,
    orders: jax.Array,
    masks: jax.Array,
    num_valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    train_config: TrainConfig,
    chunk_size: int,
    layouts: tuple[ChunkLayout, ...],
) -> TrainedPopulation:
    """One device's share of the population: all its training, chunk by chunk.

    ``masks`` (P_local, D) bool, this device's block of the population;
    ``num_valid`` () int32, the heads of the whole population before it was
    evened out over the devices: heads past it are padding and never run.
    The local population is padded to a multiple of ``chunk_size`` with
    more such heads. With several ``layouts``, heads are sorted by feature
    count so that a chunk holds heads of similar size, and each chunk trains in
    the smallest layout that holds its masks (``layout_level``).
    """
    population = masks.shape[0]
    padded_population = -(-population // chunk_size) * chunk_size
    num_chunks = padded_population // chunk_size
    first_head = jax.lax.axis_index(devices.POPULATION_AXIS) * population  # in the whole population
    valid = first_head + jnp.arange(population) < num_valid
    # A zero column at index D: padded feature indices of the gathered layer point at it.
    x = jnp.concatenate([x.astype(jnp.float32), jnp.zeros((x.shape[0], 1), jnp.float32)], axis=1)
    y = y.astype(jnp.int32)
    masks = jnp.pad(masks.astype(bool), ((0, padded_population - population), (0, 0)))
    valid = jnp.pad(valid, (0, padded_population - population))
    counts = jnp.where(valid, jnp.sum(masks, axis=1), -1)
    order = jnp.argsort(-counts, stable=True) if len(layouts) > 1 else jnp.arange(padded_population)
    heads_by_chunk = order.reshape(num_chunks, chunk_size)  # (chunks, K) indices into the padded population
    branches = [functools.partial(_train_chunk, train_config=train_config, layout=lay) for lay in layouts]

    def train_chunk(heads):
        operands = (init_params, masks[heads], valid[heads], x, y, orders)
        if len(branches) == 1:
            return branches[0](*operands)
        return jax.lax.switch(layout_level(layouts, counts[heads]), branches, *operands)

    def train_chunk_into(chunk, results):
        heads = heads_by_chunk[chunk]
        trained = train_chunk(heads)
        # Written in place at the heads' own positions; padding heads (>= P_local) are dropped.
        return jax.tree.map(lambda out, new: out.at[heads].set(new, mode="drop"), results, trained)

    # One (P_local, ...) buffer per result, filled chunk by chunk: no stacked copy to reorder.
    chunk_shapes = jax.eval_shape(train_chunk, heads_by_chunk[0])
    results = jax.tree.map(lambda leaf: jnp.zeros((population, *leaf.shape[1:]), leaf.dtype), chunk_shapes)
    return jax.lax.fori_loop(0, num_chunks, train_chunk_into, results)


def _train_population(
    init_params: head.HeadParams,
    orders: jax.Array,
    masks: jax.Array,
    num_valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    train_config: TrainConfig,
    chunk_size: int,
    layouts: tuple[ChunkLayout, ...],
    mesh: Mesh,
) -> TrainedPopulation:
    """``train_population`` after validation: all the training, in one call.

    Every device of ``mesh`` runs ``_train_local`` on its block of the
    population (masks split on axis 0, everything else replicated); no device
    talks to another, so the program each device runs is the one-device
    program, on fewer heads. P must be a multiple of the mesh size.
    """
    population, replicated = PartitionSpec(devices.POPULATION_AXIS), PartitionSpec()
    train_local = functools.partial(
        _train_local, train_config=train_config, chunk_size=chunk_size, layouts=layouts
    )
    # check_vma off: the per-device program has no collectives, and its loop carries
    # mix replicated and per-device values, which the check would make us annotate.
    return jax.shard_map(
        train_local,
        mesh=mesh,
        in_specs=(replicated, replicated, population, replicated, replicated, replicated),
        out_specs=population,
        check_vma=False,
    )(init_params, orders, masks, num_valid, x, y)


# XLA on GPU turns loop bodies into CUDA graphs ("command buffers"). On an H200
# (jax 0.11.2) the training programs of a search (chunks of about 30 heads) failed
# to instantiate theirs: "RESOURCE_EXHAUSTED: Underlying backend ran out of memory
# trying to instantiate command buffer with 20 (total of 33 alive graphs in the
# process)", with XLA holding its default 75% of the memory. Turning them off is the
# remedy XLA's message names, and for chunks of several heads it costs nothing
# (H100, 32 heads: 259 us per step without, 263 us with, benchmarks/step_profile.py).
# A chunk of one head is launch-bound, and there they matter: 287 head-epochs/s with
# them, 90 without (H100, trainer_throughput P = 1), so those programs keep them.
# Other backends ignore the option.
_TRAINING_COMPILER_OPTIONS = {"xla_gpu_enable_command_buffer": ""}
_STATIC_ARGUMENTS = ("train_config", "chunk_size", "layouts", "mesh")
_train_one_head_per_chunk_jit = jax.jit(_train_population, static_argnames=_STATIC_ARGUMENTS)
_train_chunks_jit = jax.jit(
    _train_population, static_argnames=_STATIC_ARGUMENTS, compiler_options=_TRAINING_COMPILER_OPTIONS
)


def _training_program(chunk_size: int):
    """The jitted trainer for chunks of ``chunk_size`` heads (command buffers only for one head)."""
    return _train_one_head_per_chunk_jit if chunk_size == 1 else _train_chunks_jit


def train_population(
    key: jax.Array,
    masks: jax.Array,
    x: jax.Array,
    y: jax.Array,
    config: RunConfig,
    *,
    num_classes: int | None = None,
    gather_features: bool | None = None,
    num_trained: int | None = None,
) -> TrainedPopulation:
    """Train one head per mask on (x, y): all the training in one jitted call.

    Args:
      key: PRNG key. Split into the initial-weights key (``head.init``, the same
        weights for every head) and the minibatch-order key.
      masks: (P, D) bool, the features each head keeps; an all-zero mask is
        allowed.
      x: (N, D) float features (cast to float32).
      y: (N,) int class labels in [0, num_classes).
      config: uses ``config.head.hidden`` and ``config.train``.
      num_classes: C; defaults to ``int(y.max()) + 1`` (computed on the host).
      gather_features: train each head on its kept features only (see the
        module docstring). ``None`` (default) does so when the optimizer is in
        ``ROW_SEPARABLE_OPTIMIZERS``; ``True`` with another optimizer is an
        error, ``False`` trains masked dense kernels.
      num_trained: train only ``masks[:num_trained]`` (default: all). The
        others are placeholders that keep a compiled shape (the search pads
        each generation's new masks to a few bucket sizes): they never run, and
        come back with 0 epochs and their initial weights. A traced value: any
        count reuses the compiled call.

    Returns:
      ``TrainedPopulation`` with a leading P axis on every field.

    Memory: the per-head state is ``bytes_per_head``, about
    (4 + restore_best) * (D*H + H*C + C) * 4 bytes for the weights, the best
    copy, the gradient, the update and the returned kernel, plus the optimizer
    state (another (D*H + H*C + C) * 4 for SGD with momentum, twice that for
    Adam), plus one minibatch of activations, about B * (D + 4H) * 4 bytes; with
    ``gather_features`` the training state shrinks to c / D of that. It grows
    linearly in the chunk size K, not in P (chunks run one after another), and
    linearly in D * H. The returned parameters are P * (D*H + H*C + C) * 4
    bytes. Shared by all heads: the data, N * (D + 1) * 4 bytes, and the epoch
    orders, max_epochs * N * 4 bytes. With the paper's head (D = 2048, H = 512,
    SGD with momentum, restore_best) a head needs about 25 MiB, so on an
    accelerator the default 2 GiB budget would allow about 80 heads per chunk;
    chunks hold at most ``MAX_HEADS_PER_CHUNK`` (32; a population of up to 40
    is one chunk).
    The chunk size is ``config.train.chunk_size`` if set, else chosen by
    ``choose_chunk_size`` (1 on a CPU, from ``config.train.memory_budget_mb``
    elsewhere); P is padded to a multiple of it with empty heads marked stopped
    from the start, and the padding is sliced off.

    Devices: the population is split over the devices of
    ``config.train.devices`` (every device JAX sees by default; ``devices.py``),
    each device training its block of P / n heads with the program above, the
    data and the shared initial weights replicated. P is padded to a multiple
    of n with heads that never run, sliced off the result; memory figures are
    per device, with P / n in place of P. The returned arrays are split over
    the devices on their P axis (on several hosts: global arrays).

    Compute: each minibatch costs about 4 * B * c * H FLOPs per head for the
    first layer (forward and kernel gradient), the bulk of the work, plus the
    optimizer's pass over c * H weights; stopped heads of a chunk ride along
    (their updates discarded) until every head of the chunk has stopped.
    """
    # Host data stays on the host until it is placed on the mesh (no detour via device 0).
    masks = masks if isinstance(masks, jax.Array) else np.asarray(masks)
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    y_host = np.asarray(y)
    if masks.ndim != 2:
        raise ValueError(f"train_population: masks must be (P, D), got shape {masks.shape}")
    if x.ndim != 2 or x.shape[1] != masks.shape[1]:
        raise ValueError(
            f"train_population: x must be (N, D) with D = {masks.shape[1]} (from masks), got shape {x.shape}"
        )
    if y_host.shape != (x.shape[0],):
        raise ValueError(f"train_population: y must be ({x.shape[0]},) to match x, got shape {y_host.shape}")
    if not np.issubdtype(y_host.dtype, np.integer):
        raise ValueError(f"train_population: y must hold integer class labels, got dtype {y_host.dtype}")
    if x.shape[0] == 0 or masks.shape[0] == 0:
        raise ValueError(
            f"train_population: need at least one sample and one mask, got x {x.shape}, masks {masks.shape}"
        )
    label_min, label_max = int(y_host.min()), int(y_host.max())
    if num_classes is None:
        num_classes = label_max + 1
    if label_min < 0 or label_max >= num_classes:
        raise ValueError(
            f"train_population: labels must lie in [0, {num_classes}), found [{label_min}, {label_max}]"
        )
    train_config = config.train
    separable = train_config.optimizer in ROW_SEPARABLE_OPTIMIZERS
    if gather_features and not separable:
        raise ValueError(
            f"train_population: gather_features needs an optimizer from {sorted(ROW_SEPARABLE_OPTIMIZERS)}, "
            f"got {train_config.optimizer!r}"
        )
    if gather_features is None:
        gather_features = separable

    mesh = devices.mesh_for(train_config.devices)
    population, num_features = masks.shape
    num_trained = population if num_trained is None else int(num_trained)
    if not 0 <= num_trained <= population:
        raise ValueError(f"train_population: num_trained must lie in [0, {population}], got {num_trained}")
    # Evened out over the devices with heads that never run, sliced off below.
    padded_masks, _ = devices.pad_population(masks, mesh.size)
    init_params, orders = _initial_weights_and_orders(
        key,
        num_features=num_features,
        num_classes=int(num_classes),
        hidden=config.head.hidden,
        num_epochs=train_config.max_epochs,
        num_samples=x.shape[0],
    )
    everywhere, split = devices.replicated(mesh), devices.sharded(mesh)
    local_population = padded_masks.shape[0] // mesh.size
    chunk_size = choose_chunk_size(
        local_population, num_features, num_classes, config.head.hidden, train_config
    )
    layouts = chunk_layouts(num_features, chunk_size, gather_features)
    trained = _training_program(chunk_size)(
        devices.put(init_params, everywhere),
        devices.put(orders, everywhere),
        devices.put(padded_masks, split),
        np.int32(num_trained),
        devices.put(x, everywhere),
        devices.put(y if isinstance(y, jax.Array) else y_host, everywhere),
        train_config=train_config,
        chunk_size=chunk_size,
        layouts=layouts,
        mesh=mesh,
    )
    if padded_masks.shape[0] != population:
        trained = jax.tree.map(lambda leaf: leaf[:population], trained)
    return trained
