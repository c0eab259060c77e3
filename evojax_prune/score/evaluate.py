"""Evaluate a population of trained heads: accuracy, MEM and OoD robustness, in one jitted call.

For each head p with mask p: logits on the in-distribution (InD) validation
features and on the OoD features, the configured OoD score of both
(``config.ood.score``, ``ood_scores.py``; ODIN by default), and the metrics
of ``metrics.py``. The search minimises the objective vector
``(1 - accuracy, MEM, 1 - AUROC)`` (MO-EvoPruneDeepTL, arXiv 2302.10253;
PROTOCOL.md, "Robustness objective" and "Objectives and splits").

Memory. Heads are evaluated ``chunk_size`` at a time: vmap inside a chunk,
sequential (``jax.lax.map``) over chunks. A chunk holds its heads' masked
inputs, (chunk, N + M, D) float32, the largest intermediate ``head.apply``
makes (XLA keeps about two copies), plus hidden activations (chunk, N + M, H)
and logits; ODIN perturbation (epsilon > 0) about doubles that, and a fitted
score adds each head's training activations (``train.memory.scoring_bytes``).
Peak temporary memory therefore grows linearly with the chunk size and not
with P; the P heads' parameters, P * (D H + H C + C) * 4 bytes, are read in
place (never copied or padded). By default the chunk is sized from
``config.engine.memory_budget_mb`` (``auto_chunk_size``), the budget the
trainer already respects. docs/benchmarks.md ("Memory per head") compares the
estimate with XLA's memory analysis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import PartitionSpec

from evojax_prune import devices, head
from evojax_prune.config import AurocKind, PruneTarget, RunConfig
from evojax_prune.result import objectives
from evojax_prune.score import metrics, ood_scores
from evojax_prune.train import memory


@struct.dataclass
class PopulationMetrics:
    """Metrics of P heads, each a (P,) float32 array (or () for a single head).

    Attributes:
      accuracy: fraction of InD samples classified correctly.
      mem: fraction of the D mask bits set (the MEM objective, minimised).
      auroc: exact AUROC of the OoD scores (``config.ood.score``), InD vs OoD
        (Mann-Whitney, ties half).
      auroc_paper: the authors' 100-threshold AUROC (``metrics.auroc_paper``).
      fpr95: FPR at 95% TPR with InD as positive (ODIN paper's convention).
      aupr_in: average precision with InD as positive.
      aupr_out: average precision with OoD as positive (scores negated).
    """

    accuracy: jax.Array
    mem: jax.Array
    auroc: jax.Array
    auroc_paper: jax.Array
    fpr95: jax.Array
    aupr_in: jax.Array
    aupr_out: jax.Array

    def objectives(self, auroc_kind: AurocKind = "exact", diverged: Any = None) -> np.ndarray:
        """(P, 3) objectives to minimise, error, MEM and 1 - AUROC, on the host (``result.objectives``).

        Args:
          auroc_kind: ``"exact"`` (``auroc``) or ``"paper"`` (``auroc_paper``),
            normally ``config.ood.auroc``.
          diverged: (P,) bool, ``TrainedPopulation.diverged``: those heads get
            the reference point (1, 1, 1). None: no head diverged.
        """
        values = {field.name: np.asarray(getattr(self, field.name)) for field in dataclasses.fields(self)}
        if diverged is not None:
            values["diverged"] = np.asarray(diverged)
        return objectives(values, auroc_kind)


def evaluate_head(
    params: head.HeadParams,
    mask: jax.Array,
    features: jax.Array,
    labels: jax.Array,
    ood_features: jax.Array,
    ood: ood_scores.OodSpec = ood_scores.DEFAULT_SPEC,
    prune: PruneTarget = "features",
    train: tuple[jax.Array, jax.Array] | tuple[()] = (),
) -> PopulationMetrics:
    """Metrics of one head, as () float32 fields.

    Args:
      params: one head's parameters.
      mask: (D,) bool features kept.
      features: (N, D) float InD features; labels: (N,) int classes.
      ood_features: (M, D) float OoD features.
      ood: the OoD score, its temperature and ODIN's perturbation
        (``ood_scores.OodSpec``). The accuracy is always measured on the
        unperturbed features.
      prune: what ``mask`` prunes (``HeadConfig.prune``, static); MEM is
        the fraction of its bits kept.
      train: (x_train (N_t, D), y_train (N_t,)) where the score is fitted on
        the training split (``ood.fitted``), else ``()``.

    Returns:
      PopulationMetrics of scalars.
    """
    num_ind = features.shape[0]
    # One matrix product for InD and OoD together; rows do not interact.
    all_features = jnp.concatenate([features, ood_features], axis=0)
    all_logits, scores = ood_scores.head_scores(
        params, mask, all_features, ood=ood, train=train, prune=prune,
    )
    return PopulationMetrics(
        accuracy=metrics.accuracy(all_logits[:num_ind], labels),
        mem=metrics.fraction(jnp.sum(mask), mask.shape[-1]),
        **metrics.ood_metrics(scores[:num_ind], scores[num_ind:]),
    )


def chunk_starts(population: int, chunk_size: int) -> np.ndarray:
    """First head of each chunk; the last chunk is moved back to end at P.

    Moving the last chunk back (it then overlaps the one before) keeps every
    chunk full without padding or slicing the parameter stack, both of which
    would copy all P heads' parameters (``lax.map(batch_size=...)`` does so
    whenever P is not a multiple of the batch size). The overlapping
    heads are evaluated twice, with identical results.

    Returns:
      (ceil(P / chunk_size),) int64, non-decreasing, each in [0, P - chunk_size].
    """
    num_chunks = -(-population // chunk_size)
    return np.minimum(np.arange(num_chunks) * chunk_size, population - chunk_size)


def _stitch_chunks(per_chunk: jax.Array, starts: np.ndarray, chunk_size: int, population: int) -> jax.Array:
    """(num_chunks, chunk, ...) results -> (P, ...), each head read from the chunk that owns it."""
    head_index = np.arange(population)
    owner = np.minimum(head_index // chunk_size, len(starts) - 1)
    flat_index = owner * chunk_size + (head_index - starts[owner])
    return per_chunk.reshape((-1, *per_chunk.shape[2:]))[flat_index]


def _evaluate_local(params, masks, features, labels, ood_features, ood, train, *, chunk_size, prune):
    """One device's block of heads: vmap inside a chunk, sequential over chunks."""
    def evaluate_many(some_params, some_masks):
        evaluate_one = functools.partial(
            evaluate_head, features=features, labels=labels, ood_features=ood_features, ood=ood,
            prune=prune, train=train,
        )
        return jax.vmap(evaluate_one)(some_params, some_masks)

    population = masks.shape[0]
    if chunk_size >= population:
        return evaluate_many(params, masks)
    starts = chunk_starts(population, chunk_size)

    def evaluate_chunk(start):
        take = lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, chunk_size, axis=0)
        return evaluate_many(jax.tree.map(take, params), take(masks))

    # Sequential over chunks (memory), vmap inside a chunk (speed).
    per_chunk = jax.lax.map(evaluate_chunk, jnp.asarray(starts, jnp.int32))
    return jax.tree.map(lambda leaf: _stitch_chunks(leaf, starts, chunk_size, population), per_chunk)


# ``ood`` is a pytree: its temperature is traced (a sweep over T compiles once), its score
# and epsilon are static (``OodSpec``).
@functools.partial(jax.jit, static_argnames=("chunk_size", "mesh", "prune"))
def evaluate_sharded(params, masks, features, labels, ood_features, ood, train=(), *, chunk_size: int,
                     mesh=None, prune: PruneTarget = "features") -> PopulationMetrics:
    """``evaluate_population``'s compiled program, for callers that place the data themselves.

    Each device of ``mesh`` scores its block of heads (params and masks split
    on axis 0, data, ``ood`` and ``train`` replicated); the (P,) metrics come
    back replicated, so that every process of a multi-host run can read all of
    them. P must be a multiple of the mesh size and ``chunk_size`` at most P
    per device; nothing is checked here (``evaluate_population`` checks).
    ``mesh`` None is every device. benchmarks/odin_metrics.py lowers it to
    read XLA's memory analysis.
    """
    mesh = devices.mesh_for(None) if mesh is None else mesh
    population, replicated = PartitionSpec(devices.POPULATION_AXIS), PartitionSpec()
    evaluate_local = functools.partial(_evaluate_local, chunk_size=chunk_size, prune=prune)
    scores = jax.shard_map(
        evaluate_local,
        mesh=mesh,
        in_specs=(population, population, replicated, replicated, replicated, replicated, replicated),
        out_specs=population,
        check_vma=False,  # no collectives inside; the check would only ask for annotations
    )(params, masks, features, labels, ood_features, ood, tuple(train))
    return jax.lax.with_sharding_constraint(scores, devices.replicated(mesh))


def auto_chunk_size(num_rows: int, num_features: int, hidden: int, num_classes: int,
                    perturb: bool, memory_budget_mb: float, num_train_rows: int = 0) -> int:
    """Most heads whose temporaries (``memory.scoring_bytes``) fit in ``memory_budget_mb`` (at least 1)."""
    per_head = memory.scoring_bytes(num_rows, num_features, hidden, num_classes, perturb, num_train_rows)
    return memory.heads_within(memory_budget_mb, per_head)


def _check_shapes(params: head.HeadParams, masks, features, labels, ood_features, head_config, train) -> None:
    def fail(message: str) -> None:
        raise ValueError(f"evaluate_population: {message}")

    if masks.ndim != 2:
        fail(f"masks must be (P, L), found shape {masks.shape}")
    population = masks.shape[0]
    hidden_kernel = params.hidden_kernel
    if hidden_kernel.ndim != 3 or hidden_kernel.shape[0] != population:
        fail(f"params.hidden_kernel must be (P, D, H) with P = {population} to match masks, "
             f"found shape {hidden_kernel.shape}")
    num_features = hidden_kernel.shape[1]
    length = head_config.chromosome_length(num_features)
    if masks.shape[1] != length:
        fail(f"masks must be (P, {length}) for HeadConfig.prune {head_config.prune!r} and "
             f"D = {num_features}, found shape {masks.shape}")
    if params.output_kernel.shape[0] != population or params.output_bias.shape[0] != population:
        fail(
            f"params.output_kernel and params.output_bias must be stacked on P = {population} heads, "
            f"found shapes {params.output_kernel.shape} and {params.output_bias.shape}"
        )
    if (params.second_kernel is None) != (head_config.hidden_layers == 1):
        fail(f"params.second_kernel must be {'None' if head_config.hidden_layers == 1 else '(P, H, H)'} for "
             f"HeadConfig.hidden_layers = {head_config.hidden_layers}")
    for name, array in (("features", features), ("ood_features", ood_features)):
        if array.ndim != 2 or array.shape[1] != num_features:
            fail(f"{name} must be (rows, D = {num_features}), found shape {array.shape}")
        if array.shape[0] == 0:
            fail(f"{name} has no rows")
    if labels.shape != (features.shape[0],):
        fail(f"labels must be (N,) = ({features.shape[0]},) to match features, found shape {labels.shape}")
    if train:
        x_train, y_train = train
        if x_train.ndim != 2 or x_train.shape[1] != num_features or x_train.shape[0] == 0:
            fail(f"train[0] (x_train) must be (N_t >= 1, D = {num_features}), found shape {x_train.shape}")
        if y_train.shape != (x_train.shape[0],):
            fail(f"train[1] (y_train) must be (N_t,) = ({x_train.shape[0]},) to match x_train, "
                 f"found shape {y_train.shape}")


def evaluate_population(
    params: head.HeadParams,
    masks: jax.Array,
    features: jax.Array,
    labels: jax.Array,
    ood_features: jax.Array,
    config: RunConfig,
    chunk_size: int | None = None,
    train: tuple[jax.Array, jax.Array] | None = None,
) -> PopulationMetrics:
    """Accuracy, MEM and OoD metrics of P heads in one jitted call.

    Args:
      params: HeadParams stacked on a leading P axis: hidden_kernel (P, D, H),
        output_kernel (P, H, C), output_bias (P, C), second_kernel (P, H, H)
        or None (``config.head.hidden_layers``).
      masks: (P, L) bool chromosomes: the features each head keeps (L = D),
        or its neurons (``config.head.prune``; ``head.unit_masks``).
      features: (N, D) float InD features (the validation split in a search).
      labels: (N,) int classes of ``features``.
      ood_features: (M, D) float OoD features.
      config: uses ``config.head``, ``config.ood.score`` (the OoD score), its
        temperature (``temperature`` for ODIN, ``energy_temperature`` for the
        energy), ``config.ood.epsilon`` (feature-space perturbation, 0 = off as
        in the paper) and ``config.engine.memory_budget_mb`` when
        ``chunk_size`` is None. Only the head's layout, the score, epsilon (and
        the chunk size) are compiled in: other config changes, the
        temperatures included, do not recompile.
      chunk_size: heads evaluated at once (vmap inside a chunk, sequential over
        chunks). ``None`` sizes it from ``config.engine.memory_budget_mb``
        (``auto_chunk_size``); a value >= P evaluates all heads in one vmap.
        Peak memory grows linearly with it (module docstring); results do not
        depend on it. It is per device: the heads are split over the devices of
        ``config.engine.devices`` (``devices.py``), params and masks on their P
        axis, the data replicated; P is padded to a multiple of the device
        count by repeating the last head.
      train: (x_train (N_t, D), y_train (N_t,)), the training split; required
        (a ValueError otherwise) when ``config.ood.score`` is fitted on it
        (``"mahalanobis"``: class means and covariance per head), ignored
        otherwise.

    Returns:
      PopulationMetrics of (P,) float32 arrays. ``.objectives(config.ood.auroc)``
      gives the (P, 3) objective vectors to minimise.
    """
    valid_chunk = isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1
    if chunk_size is not None and not valid_chunk:
        raise ValueError(
            f"evaluate_population: chunk_size must be None or an integer >= 1, got {chunk_size!r}"
        )
    # Host data stays on the host until it is placed on the mesh (no detour via device 0).
    as_array = lambda array: array if isinstance(array, jax.Array) else np.asarray(array)
    masks, features, labels, ood_features = map(as_array, (masks, features, labels, ood_features))
    ood = ood_scores.OodSpec.from_config(config.ood)
    train = ood.training_rows(train, "evaluate_population")
    _check_shapes(params, masks, features, labels, ood_features, config.head, train)
    population = masks.shape[0]
    if chunk_size is None:
        chunk_size = auto_chunk_size(
            num_rows=features.shape[0] + ood_features.shape[0],
            num_features=params.hidden_kernel.shape[1],
            hidden=params.hidden_kernel.shape[-1] * config.head.hidden_layers,
            num_classes=params.output_bias.shape[-1],
            perturb=ood.epsilon > 0,
            memory_budget_mb=config.engine.memory_budget_mb,
            num_train_rows=train[0].shape[0] if train else 0,
        )
    mesh = devices.mesh_for(config.engine.devices)
    # Evened out over the devices by repeating the last head (a copy of the parameters,
    # which the search avoids by training multiples of the device count), sliced off below.
    (params, masks), _ = devices.pad_population((params, masks), mesh.size)
    everywhere, split = devices.replicated(mesh), devices.sharded(mesh)
    # Every chunk size >= the per-device population is the same program; one cache entry for all.
    chunk_size = min(chunk_size, masks.shape[0] // mesh.size)
    scores = evaluate_sharded(
        devices.put(params, split), devices.put(masks, split), devices.put(features, everywhere),
        devices.put(labels, everywhere), devices.put(ood_features, everywhere), devices.put(ood, everywhere),
        devices.put(train, everywhere), chunk_size=chunk_size, mesh=mesh, prune=config.head.prune,
    )
    if masks.shape[0] != population:
        scores = jax.tree.map(lambda leaf: leaf[:population], scores)
    return scores
