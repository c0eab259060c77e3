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

How the heads are trained on the hardware is the run's ``EngineConfig``,
resolved once per call into a ``plan.TrainingPlan`` (the chunk size, the
layouts of a chunk's first layer, the step, the tile sum, the kernel layout),
the static argument of the jitted program. Pruned features are skipped, not
multiplied by zero: each chunk trains on its heads' kept rows only, stored as
``packing.pack`` lays them out (one padded block per head, or tiles packed
across heads), and ``lax.switch`` picks the chunk's layout on the device, so
the call is compiled once per population shape. The step is a module of
``STEPS`` (``xla_step``: optax with the backward pass written by hand;
``fused_sgd_step``: the first layer's SGD step as one Pallas kernel per tile);
the epoch loop here, with early stopping and the best weights, knows no step's
internals. Packing is exact for optimizers that update every weight from its
own gradient history (``optimizer.ROW_SEPARABLE_OPTIMIZERS``): a pruned row
gets a zero gradient and so never moves; other optimizers train the dense
kernel. Results equal the dense formulation's up to float32 reassociation
(tests/test_trainer.py checks both against a reference).

benchmarks/trainer_throughput.py measures gathered against dense training and
the comparison with Keras (docs/benchmarks.md, "Memory per head" and the tables).

The training protocol is the authors' (docs/PROTOCOL.md, "Training one candidate"),
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
minibatch order (``epochs.py``), so a head's result is a function of its mask,
the data, the configuration and the key alone, up to float32 reassociation.

Keras 2.2.4, the authors' version, differs in three places, each a
``TrainConfig`` option of the faithful ``paper`` preset and off by default:
its categorical cross-entropy clips probabilities to [1e-7, 1 - 1e-7]
(``probability_epsilon``), its SGD decays the learning rate (``lr_decay``,
``keras_sgd.py``), and its EarlyStopping restores the best weights only when
patience runs out, not when ``max_epochs`` ends training
(``restore_at_max_epochs``; keras-team/keras#12511).

Reference: Poyatos et al., MO-EvoPruneDeepTL, arXiv 2302.10253.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, PartitionSpec

from evojax_prune import devices, head
from evojax_prune.config import HeadConfig, RunConfig, TrainConfig
from evojax_prune.train import epochs, fused_sgd_step, neuron_packing, packing, xla_step
from evojax_prune.train.plan import ChunkLayout, TrainingPlan, make_plan

# A head whose lowest epoch loss is above this many times log(C), the loss of a uniform
# guess, diverged (as one whose loss is not finite at some epoch): its right class gets a
# mean probability below C^-10. Learning rate 1e4 on the digits gives losses near 1e4; a
# head that learns nothing (features without signal) stays near log(C).
DIVERGED_LOSS = 10.0

# Training steps by ``TrainingPlan.step`` (``EngineConfig.step``): modules with
# ``init(params, chunk, train_config, plan) -> state``, ``epoch(state, indices,
# weights, running, chunk, train_config, plan) -> (state, (S, K) losses)`` and
# ``params(state) -> HeadParams``.
STEPS = {"xla": xla_step, "fused_sgd": fused_sgd_step}


@struct.dataclass
class TrainedPopulation:
    """The outcome of ``train_population`` for P heads, all device arrays.

    Attributes:
      params: ``HeadParams`` stacked on a leading P axis: hidden_kernel
        (P, D, H), output_kernel (P, H, C), output_bias (P, C), second_kernel
        (P, H, H) or None (``HeadConfig.hidden_layers``), float32. With
        ``restore_best`` the weights from the end of each head's best epoch
        (with ``restore_at_max_epochs`` off: only if early stopping stopped
        it), else its last weights. Rows of pruned features keep their initial
        values (they never influence the logits).
      epochs: (P,) int32, epochs each head ran before it stopped.
      final_loss: (P,) float32, the training loss of the epoch whose weights are
        returned (the best epoch when they are restored, else the last one).
      best_loss: (P,) float32, the lowest epoch training loss seen (``inf`` if
        no epoch had a finite loss).
      best_epoch: (P,) int32, the 0-based epoch of the best loss (whose weights
        were kept as best).
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
    step_state: Any  # the step's (``STEPS``): weights in the chunk's training layout, optimizer state
    best_params: Any  # HeadParams like params, or () when weights are not restored
    running: jax.Array  # (K,) bool, still training
    wait: jax.Array  # (K,) int32, epochs since the last improvement
    epochs: jax.Array  # (K,) int32
    best_loss: jax.Array  # (K,) float32
    best_epoch: jax.Array  # (K,) int32
    kept_loss: jax.Array  # (K,) float32, loss of the epoch whose weights are kept
    last_loss: jax.Array  # (K,) float32, loss of the head's last epoch
    diverged: jax.Array  # (K,) bool, some epoch's loss was not finite


def _early_stopping(state: _ChunkState, step_state: Any, epoch_loss: jax.Array, chunk: packing.Chunk,
                    step, train_config: TrainConfig) -> _ChunkState:
    """The state after an epoch of (K,) loss ``epoch_loss``: Keras' ``EarlyStopping(monitor="loss")``."""
    running = state.running
    improved = running & (epoch_loss < state.best_loss - train_config.min_delta)
    # Keras keeps the first epoch's weights even when its loss is not finite.
    keep = improved | (running & (state.epoch == 0))
    wait = jnp.where(running, jnp.where(improved, 0, state.wait + 1), state.wait)
    stop = running & (wait >= train_config.patience) & (state.epoch > 0)
    if train_config.restore_best:
        best_params = jax.tree.map(
            lambda new, old, on: jnp.where(on.reshape(on.shape + (1,) * (new.ndim - 1)), new, old),
            step.params(step_state), state.best_params, chunk.per_leaf(keep),
        )
        kept_loss = jnp.where(keep, epoch_loss, state.kept_loss)
    else:
        best_params = ()
        kept_loss = jnp.where(running, epoch_loss, state.kept_loss)
    return _ChunkState(
        epoch=state.epoch + 1,
        step_state=step_state,
        best_params=best_params,
        running=running & ~stop,
        wait=wait,
        epochs=jnp.where(running, state.epoch + 1, state.epochs),
        best_loss=jnp.where(improved, epoch_loss, state.best_loss),
        best_epoch=jnp.where(keep, state.epoch, state.best_epoch),
        kept_loss=kept_loss,
        last_loss=jnp.where(running, epoch_loss, state.last_loss),
        diverged=state.diverged | (running & ~jnp.isfinite(epoch_loss)),
    )


def _train_chunk(
    init_params: head.HeadParams,
    masks: jax.Array,
    valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    orders: jax.Array,
    *,
    head_config: HeadConfig,
    train_config: TrainConfig,
    plan: TrainingPlan,
    layout: ChunkLayout,
) -> TrainedPopulation:
    """Train K heads together, epoch by epoch until all have stopped (see ``train_population``).

    ``masks`` (K, L) bool chromosomes (``head.unit_masks``), ``valid`` (K,)
    bool marks real heads (padding heads never run), ``x`` (N, D + 1) float32
    with a trailing zero column that padded feature indices point at, ``y``
    (N,) int32, ``orders`` (max_epochs, N) the epochs' sample orders. The heads
    are stored as ``layout`` says (``packing.pack``; the masks must fit it)
    and trained by ``plan.step``.
    """
    chunk, params, finish = _laid_out(init_params, masks, valid, x, y, head_config=head_config, plan=plan,
                                      layout=layout)
    step = STEPS[plan.step]

    def run_epoch(state: _ChunkState) -> _ChunkState:
        indices, weights = epochs.epoch_batches(orders[state.epoch], train_config.batch_size)
        step_state, losses = step.epoch(state.step_state, indices, weights, state.running, chunk,
                                        train_config, plan)
        # Keras' epoch loss: the batch losses weighted by the batch sizes.
        epoch_loss = jnp.sum(losses * jnp.sum(weights, axis=1)[:, None], axis=0) / x.shape[0]
        return _early_stopping(state, step_state, epoch_loss, chunk, step, train_config)

    def keep_going(state: _ChunkState) -> jax.Array:
        return (state.epoch < train_config.max_epochs) & jnp.any(state.running)

    num_heads = masks.shape[0]
    zeros = jnp.zeros((num_heads,), jnp.int32)
    infinities = jnp.full((num_heads,), jnp.inf, jnp.float32)
    state = _ChunkState(
        epoch=jnp.int32(0),
        step_state=step.init(params, chunk, train_config, plan),
        best_params=params if train_config.restore_best else (),
        running=valid,
        wait=zeros,
        epochs=zeros,
        best_loss=infinities,
        best_epoch=zeros,
        kept_loss=infinities,
        last_loss=infinities,
        diverged=jnp.zeros((num_heads,), bool),
    )
    state = jax.lax.while_loop(keep_going, run_epoch, state)
    trained, final_loss = _returned_weights(state, step, chunk, train_config)
    num_classes = init_params.output_kernel.shape[1]
    return TrainedPopulation(
        params=finish(trained),
        epochs=state.epochs,
        final_loss=final_loss,
        best_loss=state.best_loss,
        best_epoch=state.best_epoch,
        # A learning rate far too high gives losses in the thousands, finite but as meaningless
        # as a NaN.
        diverged=state.diverged | ~(state.best_loss <= DIVERGED_LOSS * math.log(num_classes)),
    )


def _returned_weights(state: _ChunkState, step, chunk: packing.Chunk,
                      train_config: TrainConfig) -> tuple[Any, jax.Array]:
    """The weights a chunk's heads return, in its training layout, and the loss of their epoch.

    With ``restore_best`` the best epoch's; with ``restore_at_max_epochs``
    off, only for heads that early stopping stopped (Keras 2.2.4: a head
    still running when ``max_epochs`` ends keeps its last weights).
    """
    last = step.params(state.step_state)
    if not train_config.restore_best:
        return last, state.kept_loss
    if train_config.restore_at_max_epochs:
        return state.best_params, state.kept_loss
    stopped = ~state.running  # padding heads never ran: their best and last weights are the initial ones
    weights = jax.tree.map(
        lambda best, final, on: jnp.where(on.reshape(on.shape + (1,) * (best.ndim - 1)), best, final),
        state.best_params, last, chunk.per_leaf(stopped),
    )
    return weights, jnp.where(stopped, state.kept_loss, state.last_loss)


def _laid_out(init_params, masks, valid, x, y, *, head_config: HeadConfig, plan: TrainingPlan,
              layout: ChunkLayout):
    """A chunk's heads as they train: (``packing.Chunk``, training weights, trained -> full HeadParams).

    Feature masks: the kept rows of the first kernel (``packing``). Neuron masks:
    with ``plan.neurons`` each head narrowed to its kept neurons
    (``neuron_packing``), the chunk then dense over the features; without, the
    full-width layers with the pruned neurons' activations held at zero.
    """
    features_kept, *neurons_kept = head.unit_masks(masks, head_config.prune, head_config.hidden)
    transposed = plan.kernel_transposed
    if features_kept is not None:
        chunk = packing.pack(features_kept, valid, x, y, layout, plan.tile_sum, (None, None),
                             head_config.hidden_layers)
        return (chunk, chunk.training_params(init_params, transposed),
                lambda trained: chunk.unpack(trained, init_params, transposed))
    every_feature = jnp.ones((masks.shape[0], x.shape[1] - 1), bool)
    dense = ChunkLayout(every_feature.shape[1], masks.shape[0], per_head=True)
    if not plan.neurons:
        chunk = packing.pack(every_feature, valid, x, y, dense, plan.tile_sum, tuple(neurons_kept),
                             head_config.hidden_layers)
        return (chunk, chunk.training_params(init_params, transposed),
                lambda trained: chunk.unpack(trained, init_params, transposed))
    chunk = packing.pack(every_feature, valid, x, y, dense, plan.tile_sum, (None, None),
                         head_config.hidden_layers)
    first, second = (None if kept is None else neuron_packing.kept_neurons(kept, layout.tile_rows)
                     for kept in neurons_kept)
    swap = (lambda params: params.replace(hidden_kernel=jnp.swapaxes(params.hidden_kernel, 1, 2))) \
        if transposed else (lambda params: params)
    params = swap(neuron_packing.gather(init_params, first, second, masks.shape[0]))
    return chunk, params, lambda trained: neuron_packing.scatter(swap(trained), init_params, first, second)


def _train_local(
    init_params: head.HeadParams,
    orders: jax.Array,
    masks: jax.Array,
    runs: jax.Array | None,
    num_valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    head_config: HeadConfig,
    train_config: TrainConfig,
    plan: TrainingPlan,
) -> TrainedPopulation:
    """One device's share of the population: all its training, chunk by chunk.

    ``masks`` (P_local, L) bool, this device's block of the population;
    ``num_valid`` () int32, the heads of the whole population before it was
    evened out over the devices: heads past it are padding and never run.
    The local population is padded to a multiple of ``plan.chunk_size`` with
    more such heads. With several ``plan.layouts``, heads are sorted by feature
    count so that a chunk holds heads of similar size, and each chunk trains in
    the smallest layout that holds its masks (``packing.layout_level``).

    Several runs (``runs`` (P_local,) int32, the run of each head; the initial
    weights (R, ...) and orders (R, E, N) stacked by run): every chunk holds
    heads of one run (``_chunks_by_run``) and trains from that run's weights
    and orders, so that a head trains as it would in its run alone.
    """
    chunk_size, layouts = plan.chunk_size, plan.layouts
    population = masks.shape[0]
    first_head = jax.lax.axis_index(devices.POPULATION_AXIS) * population  # in the whole population
    valid = first_head + jnp.arange(population) < num_valid
    # A zero column at index D: padded feature indices of the gathered layer point at it.
    x = jnp.concatenate([x.astype(jnp.float32), jnp.zeros((x.shape[0], 1), jnp.float32)], axis=1)
    y = y.astype(jnp.int32)
    if runs is None:
        padded_population = -(-population // chunk_size) * chunk_size
    else:  # one padding head more: the empty places of each run's last chunk point at it
        padded_population = population + 1
    masks = jnp.pad(masks.astype(bool), ((0, padded_population - population), (0, 0)))
    valid = jnp.pad(valid, (0, padded_population - population))
    counts = jnp.where(valid, _kept_units(masks, head_config), -1)
    if runs is None:
        order = jnp.argsort(-counts, stable=True) if len(layouts) > 1 else jnp.arange(padded_population)
        heads_by_chunk = order.reshape(-1, chunk_size)  # (chunks, K) indices into the padded population
        chunk_runs = None
    else:
        heads_by_chunk, chunk_runs = _chunks_by_run(counts[:population], runs, orders.shape[0], chunk_size,
                                                    sort_by_count=len(layouts) > 1)
    branches = [functools.partial(_train_chunk, head_config=head_config, train_config=train_config,
                                  plan=plan, layout=layout) for layout in layouts]

    def train_chunk(heads, run):
        start = (init_params, orders) if run is None else jax.tree.map(lambda leaf: leaf[run],
                                                                        (init_params, orders))
        operands = (start[0], masks[heads], valid[heads], x, y, start[1])
        if len(branches) == 1:
            return branches[0](*operands)
        return jax.lax.switch(packing.layout_level(layouts, counts[heads]), branches, *operands)

    def train_chunk_into(chunk, results):
        heads = heads_by_chunk[chunk]
        trained = train_chunk(heads, None if chunk_runs is None else chunk_runs[chunk])
        # Written in place at the heads' own positions; padding heads (>= P_local) are dropped.
        return jax.tree.map(lambda out, new: out.at[heads].set(new, mode="drop"), results, trained)

    # One (P_local, ...) buffer per result, filled chunk by chunk: no stacked copy to reorder.
    chunk_shapes = jax.eval_shape(train_chunk, heads_by_chunk[0], None if runs is None else jnp.int32(0))
    results = jax.tree.map(lambda leaf: jnp.zeros((population, *leaf.shape[1:]), leaf.dtype), chunk_shapes)
    return jax.lax.fori_loop(0, heads_by_chunk.shape[0], train_chunk_into, results)


def _kept_units(masks: jax.Array, head_config: HeadConfig) -> jax.Array:
    """(P, L) chromosomes -> (P,) the count a chunk's layout must hold: kept features, or kept
    neurons (the larger of the two layers' with both)."""
    if head_config.prune == "both":
        return jnp.maximum(jnp.sum(masks[:, :head_config.hidden], axis=1),
                           jnp.sum(masks[:, head_config.hidden:], axis=1))
    return jnp.sum(masks, axis=1)


def _chunks_by_run(counts: jax.Array, runs: jax.Array, num_runs: int, chunk_size: int,
                   sort_by_count: bool) -> tuple[jax.Array, jax.Array]:
    """Chunks that each hold heads of one run: (chunks, K) head indices and each chunk's (chunks,) run.

    ``counts`` (P,) kept features (-1: padding), ``runs`` (P,) int32 in [0,
    R). Each run's heads fill ceil(n_r / K) chunks of their own (most features
    first with ``sort_by_count``); a run's last chunk is completed with index
    P, a padding head. There are ceil(P / K) + R - 1 chunks, enough for any
    split of the P heads over the runs; the chunks no run needs hold padding
    only and stop at once.
    """
    population = counts.shape[0]
    num_chunks = -(-population // chunk_size) + num_runs - 1
    order = jnp.lexsort((-counts, runs)) if sort_by_count else jnp.argsort(runs, stable=True)
    sorted_runs = runs[order]
    per_run = jnp.bincount(runs, length=num_runs)
    chunks_per_run = -(-per_run // chunk_size)
    first_chunk = jnp.cumsum(chunks_per_run) - chunks_per_run
    first_position = jnp.cumsum(per_run) - per_run
    slot = first_chunk[sorted_runs] * chunk_size + jnp.arange(population) - first_position[sorted_runs]
    heads = jnp.full((num_chunks * chunk_size,), population, jnp.int32).at[slot].set(order.astype(jnp.int32))
    chunk_runs = jnp.searchsorted(first_chunk, jnp.arange(num_chunks), side="right") - 1
    return heads.reshape(num_chunks, chunk_size), jnp.clip(chunk_runs, 0, num_runs - 1).astype(jnp.int32)


def _train_population(
    init_params: head.HeadParams,
    orders: jax.Array,
    masks: jax.Array,
    runs: jax.Array | None,
    num_valid: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    head_config: HeadConfig,
    train_config: TrainConfig,
    plan: TrainingPlan,
    mesh: Mesh,
) -> TrainedPopulation:
    """``train_population`` after validation: all the training, in one call.

    Every device of ``mesh`` runs ``_train_local`` on its block of the
    population (masks split on axis 0, everything else replicated); no device
    talks to another, so the program each device runs is the one-device
    program, on fewer heads. P must be a multiple of the mesh size. ``runs``
    (P,) is split as the masks are.
    """
    population, replicated = PartitionSpec(devices.POPULATION_AXIS), PartitionSpec()
    train_local = functools.partial(_train_local, head_config=head_config, train_config=train_config,
                                    plan=plan)
    # check_vma off: the per-device program has no collectives, and its loop carries
    # mix replicated and per-device values, which the check would make us annotate.
    return jax.shard_map(
        train_local,
        mesh=mesh,
        in_specs=(replicated, replicated, population, population, replicated, replicated, replicated),
        out_specs=population,
        check_vma=False,
    )(init_params, orders, masks, runs, num_valid, x, y)


_STATIC_ARGUMENTS = ("head_config", "train_config", "plan", "mesh")
# XLA on GPU may run loop bodies as CUDA graphs ("command buffers"); ``TrainingPlan.command_buffers``
# says whether (see ``plan``). Other backends ignore the option.
_PROGRAMS = {
    True: jax.jit(_train_population, static_argnames=_STATIC_ARGUMENTS),
    False: jax.jit(_train_population, static_argnames=_STATIC_ARGUMENTS,
                   compiler_options={"xla_gpu_enable_command_buffer": ""}),
}


def trace_training(key: jax.Array, masks: np.ndarray, x: np.ndarray, y: np.ndarray, *, num_classes: int,
                   head_config: HeadConfig, train_config: TrainConfig, plan: TrainingPlan,
                   mesh=None) -> jax.stages.Traced:
    """The training program ``train_population`` runs under ``plan``, traced and not run.

    For reading what a plan compiles to (``.lower().as_text()``, or
    ``.lower(lowering_platforms=("cuda",))`` for a GPU plan on a machine
    without one): the tests and benchmarks check a plan's kernels and
    scatters this way. ``plan`` is taken as given (``plan.make_plan`` builds
    one for any platform); masks (P, L) with P a multiple of the mesh size and
    of the plan's chunk.
    """
    init_params, orders = epochs.initial_weights_and_orders(
        key, num_features=x.shape[1], num_classes=num_classes, hidden=head_config.hidden,
        hidden_layers=head_config.hidden_layers, num_epochs=train_config.max_epochs, num_samples=x.shape[0],
    )
    return _PROGRAMS[plan.command_buffers].trace(
        init_params, orders, masks, None, np.int32(masks.shape[0]), x, y, head_config=head_config,
        train_config=train_config, plan=plan, mesh=devices.mesh_for(None) if mesh is None else mesh,
    )


def train_population(
    key: jax.Array,
    masks: jax.Array,
    x: jax.Array,
    y: jax.Array,
    config: RunConfig,
    *,
    num_classes: int | None = None,
    num_trained: int | None = None,
    runs: jax.Array | None = None,
) -> TrainedPopulation:
    """Train one head per mask on (x, y): all the training in one jitted call.

    Args:
      key: PRNG key. Split into the initial-weights key (``head.init``, the same
        weights for every head) and the minibatch-order key. With ``runs``, a
        stack of R keys, one per run.
      masks: (P, L) bool, each head's chromosome: the features it keeps (L =
        D), or the neurons (``HeadConfig.prune``, ``head.unit_masks``); an
        all-zero mask is allowed.
      x: (N, D) float features (cast to float32).
      y: (N,) int class labels in [0, num_classes).
      config: uses ``config.head`` (the head and what it prunes), ``config.train`` (what is
        learnt) and ``config.engine`` (how: resolved by ``training_plan``).
      num_classes: C; defaults to ``int(y.max()) + 1`` (computed on the host).
      num_trained: train only ``masks[:num_trained]`` (default: all). The
        others are placeholders that keep a compiled shape (the search pads
        each generation's new masks to a few bucket sizes): they never run, and
        come back with 0 epochs and their initial weights. A traced value: any
        count reuses the compiled call.
      runs: (P,) int, the run of each head, for heads of R independent
        searches trained in one call: head p starts from the weights and sees
        the minibatch order of ``key[runs[p]]``, as it would trained with that
        key alone (chunks never mix runs). None: one run, ``key``.

    Returns:
      ``TrainedPopulation`` with a leading P axis on every field.

    Memory: the per-head state is ``memory.training_bytes``, about
    (4 + restore_best) * (D*H + H*C + C) * 4 bytes for the weights, the best
    copy, the gradient, the update and the returned kernel, plus the optimizer
    state (another (D*H + H*C + C) * 4 for SGD with momentum, twice that for
    Adam), plus one minibatch of activations, about B * (D + 4H) * 4 bytes; with
    ``EngineConfig.gather_features`` the training state shrinks to c / D of that. It grows
    linearly in the chunk size K, not in P (chunks run one after another), and
    linearly in D * H. The returned parameters are P * (D*H + H*C + C) * 4
    bytes. Shared by all heads: the data, N * (D + 1) * 4 bytes, and the epoch
    orders, max_epochs * N * 4 bytes. ``train.memory.training_bytes`` is this
    estimate (docs/benchmarks.md, "Memory per head", works it out for the
    paper's head); chunks hold at most ``EngineConfig.max_heads_per_chunk``.
    The chunk size is ``config.engine.chunk_size`` if set, else chosen by
    ``plan.choose_chunk_size`` (1 on a CPU, from ``config.engine.memory_budget_mb``
    elsewhere); P is padded to a multiple of it with empty heads marked stopped
    from the start, and the padding is sliced off.

    Devices: the population is split over the devices of
    ``config.engine.devices`` (every device JAX sees by default; ``devices.py``),
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
    num_classes = _check_inputs(masks, x, y_host, config, num_classes)
    keys, runs = _run_keys(key, runs, masks.shape[0])
    train_config = config.train
    mesh = devices.mesh_for(config.engine.devices)
    population, num_features = masks.shape[0], x.shape[1]
    num_trained = population if num_trained is None else int(num_trained)
    if not 0 <= num_trained <= population:
        raise ValueError(f"train_population: num_trained must lie in [0, {population}], got {num_trained}")
    # Evened out over the devices with heads that never run, sliced off below.
    (padded_masks, runs), _ = devices.pad_population((masks, runs), mesh.size)
    plan = training_plan(config, padded_masks.shape[0] // mesh.size, num_features, num_classes, mesh)
    start = functools.partial(
        epochs.initial_weights_and_orders,
        num_features=num_features,
        num_classes=num_classes,
        hidden=config.head.hidden,
        hidden_layers=config.head.hidden_layers,
        num_epochs=train_config.max_epochs,
        num_samples=x.shape[0],
    )
    init_params, orders = start(key) if runs is None else jax.vmap(start)(keys)
    everywhere, split = devices.replicated(mesh), devices.sharded(mesh)
    trained = _PROGRAMS[plan.command_buffers](
        devices.put(init_params, everywhere),
        devices.put(orders, everywhere),
        devices.put(padded_masks, split),
        None if runs is None else devices.put(runs, split),
        np.int32(num_trained),
        devices.put(x, everywhere),
        devices.put(y if isinstance(y, jax.Array) else y_host, everywhere),
        head_config=config.head,
        train_config=train_config,
        plan=plan,
        mesh=mesh,
    )
    if padded_masks.shape[0] != population:
        trained = jax.tree.map(lambda leaf: leaf[:population], trained)
    return trained


def _check_inputs(masks, x, y: np.ndarray, config: RunConfig, num_classes: int | None) -> int:
    """Raises ValueError naming what does not fit; returns the class count C."""
    if masks.ndim != 2:
        raise ValueError(f"train_population: masks must be (P, L), got shape {masks.shape}")
    if x.ndim != 2:
        raise ValueError(f"train_population: x must be (N, D), got shape {x.shape}")
    length = config.head.chromosome_length(x.shape[1])
    if masks.shape[1] != length:
        raise ValueError(
            f"train_population: masks must be (P, {length}), a bit for each of the {length} "
            f"{head.UNIT_NAMES[config.head.prune]} (HeadConfig.prune {config.head.prune!r}, x of "
            f"D = {x.shape[1]}), got shape {masks.shape}"
        )
    if y.shape != (x.shape[0],):
        raise ValueError(f"train_population: y must be ({x.shape[0]},) to match x, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"train_population: y must hold integer class labels, got dtype {y.dtype}")
    if x.shape[0] == 0 or masks.shape[0] == 0:
        raise ValueError(
            f"train_population: need at least one sample and one mask, got x {x.shape}, masks {masks.shape}"
        )
    label_min, label_max = int(y.min()), int(y.max())
    if num_classes is None:
        num_classes = label_max + 1
    if label_min < 0 or label_max >= num_classes:
        raise ValueError(
            f"train_population: labels must lie in [0, {num_classes}), found [{label_min}, {label_max}]"
        )
    return int(num_classes)


def _run_keys(key: jax.Array, runs: Any, population: int) -> tuple[jax.Array, np.ndarray | None]:
    """(keys (R, ...), runs (P,) int32) checked, or (key, None) for one run."""
    if runs is None:
        return key, None
    runs = np.asarray(runs)
    num_runs = len(key)  # typed keys (R,) or raw ones (R, 2)
    if runs.shape != (population,) or not np.issubdtype(runs.dtype, np.integer):
        raise ValueError(f"train_population: runs must be ({population},) integers, one per mask, "
                         f"got {runs.dtype} of shape {runs.shape}")
    if runs.min() < 0 or runs.max() >= num_runs:
        raise ValueError(f"train_population: runs must lie in [0, {num_runs}) (one key per run), found "
                         f"[{runs.min()}, {runs.max()}]")
    return key, runs.astype(np.int32)


def training_plan(config: RunConfig, population: int, num_features: int, num_classes: int,
                  mesh: Mesh | None = None) -> TrainingPlan:
    """``config.engine`` resolved for ``population`` heads per device of ``mesh``.

    ``mesh`` defaults to the one of ``config.engine.devices``; the plan is made
    for the platform of its devices (``plan.make_plan``).
    """
    mesh = devices.mesh_for(config.engine.devices) if mesh is None else mesh
    return make_plan(
        config.engine, config.train, population=population, num_features=num_features,
        num_classes=num_classes, hidden=config.head.hidden, platform=mesh.devices.flat[0].platform,
        prune=config.head.prune, hidden_layers=config.head.hidden_layers,
    )

