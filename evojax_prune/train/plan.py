"""The training plan: ``EngineConfig`` resolved once, for a platform and a population.

``make_plan`` turns the engine section of a ``RunConfig`` (every field may be
``"auto"``) into a ``TrainingPlan``: frozen, hashable, the static argument of
the jitted trainer, so that everything the traced program depends on is in
jit's cache key and in the run's config.json. Nothing here is read while a
program is traced; the platform is the one of the devices the heads train on.

What ``auto`` resolves to, and why (the measurements behind each choice, on a
2-core CPU, an H100 and an H200: docs/benchmarks.md, "Measurements behind the
docstrings"):

  * chunk size: 1 on a CPU (one head's products already keep the cores busy;
    more heads per chunk cost more per head-step); on an accelerator as many
    heads as the memory budget allows, balanced, at most
    ``max_heads_per_chunk`` (32: on an H100 packed chunks of 64 failed to
    launch XLA's scatter and ran far slower per head than chunks of 32).
  * capacity levels: 16 for chunks of one head (faster than 8 at RPS shapes
    on a CPU, for a longer compile; ``benchmarks/cpu_step_layouts.py``), 8 for
    packed chunks.
  * kernel layout: (H, c) for chunks of one head on a CPU (XLA's CPU products
    read the contraction contiguously), (c, H) elsewhere.
  * step: the fused SGD kernel (``fused_sgd.sgd_step``) for packed chunks on a
    GPU where Triton compiles the shapes, XLA's step otherwise.
  * tile sum: gather on a GPU (a fixed order; XLA's scatter adds with atomics
    in no fixed order), scatter elsewhere. The GPU figures of 2026-11-26 were
    measured with the scatter; the gather's cost there is unmeasured.
  * command buffers: only for chunks of one head. On an H200 (jax 0.11.2) the
    programs of a search (chunks of about 30 heads) failed to instantiate
    their CUDA graphs ("RESOURCE_EXHAUSTED ... instantiate command buffer");
    without them packed chunks ran as fast, while a chunk of one head,
    launch-bound, ran about 3x slower.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from evojax_prune.config import AUTO, EngineConfig, TrainConfig
from evojax_prune.train import fused_sgd, memory
from evojax_prune.train.optimizer import ROW_SEPARABLE_OPTIMIZERS

_FLOAT_BYTES = 4

# The capacity ladder: multiples of D / levels rounded up to _CAPACITY_ALIGN and at
# least _CAPACITY_MIN_STEP apart. More levels waste less padding, but each adds one
# compiled branch (seconds of XLA compile), which small D does not repay.
PACKED_CAPACITY_LEVELS = 8
ONE_HEAD_CAPACITY_LEVELS = 16
_CAPACITY_ALIGN = 8
_CAPACITY_MIN_STEP = 32


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


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How one ``train_population`` call trains: the engine resolved (``make_plan``).

    Attributes:
      platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``, of the devices it trains on.
      chunk_size: K, heads trained at once per device.
      layouts: the layouts a chunk may train in, smallest first (one compiled
        branch each; ``chunk_layouts``); all per head, or all packed.
      step: ``"xla"`` or ``"fused_sgd"``, the step of every chunk.
      tile_sum: ``"gather"`` or ``"scatter"``: how packed chunks sum tiles.
      kernel_transposed: chunks keep their first kernel as (K, H, c).
      command_buffers: XLA may run loop bodies as CUDA graphs.
      neurons: the layouts are over the hidden neurons a chromosome keeps
        (``neuron_packing``; capacities of H), not over the features.
    """

    platform: str
    chunk_size: int
    layouts: tuple[ChunkLayout, ...]
    step: str
    tile_sum: str
    kernel_transposed: bool
    command_buffers: bool
    neurons: bool = False

    @property
    def packed(self) -> bool:
        return not self.layouts[0].per_head

    @property
    def interpret_kernels(self) -> bool:
        """Pallas kernels run in its interpreter (off a GPU: slow, for tests)."""
        return self.platform != "gpu"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for config.json and benchmark records."""
        return {
            "platform": self.platform,
            "chunk_size": self.chunk_size,
            "layouts": [dataclasses.asdict(layout) for layout in self.layouts],
            "step": self.step,
            "tile_sum": self.tile_sum,
            "kernel_transposed": self.kernel_transposed,
            "command_buffers": self.command_buffers,
            "neurons": self.neurons,
        }


def capacity_levels(num_features: int, num_levels: int = PACKED_CAPACITY_LEVELS) -> tuple[int, ...]:
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


def chunk_layouts(
    num_features: int, chunk_size: int, gather: bool, num_levels: int | None = None
) -> tuple[ChunkLayout, ...]:
    """The layouts a chunk may be trained in, smallest first (one compiled branch each).

    Dense (``gather`` off, or D too small to gather): the one layout (D, K).
    Chunks of one head: the head's kept rows padded to a capacity from
    ``capacity_levels`` with ``num_levels`` (default 16). Larger chunks
    (accelerators) pack tiles of half a capacity step of ``num_levels``
    (default 8) levels: a chunk mixing heads of 100 and 2,000 kept features
    (a generation of the search, trained as one chunk) trains about the sum of
    their widths, not K times the widest; its tile count is padded to one of
    ``num_levels`` levels, multiples of K * ceil(D / tile_rows) / levels.
    """
    packed_levels = num_levels or PACKED_CAPACITY_LEVELS
    capacities = capacity_levels(num_features, packed_levels)
    if not gather or capacities == (num_features,):
        return (ChunkLayout(num_features, chunk_size, per_head=True),)
    if chunk_size == 1:
        capacities = capacity_levels(num_features, num_levels or ONE_HEAD_CAPACITY_LEVELS)
        return tuple(ChunkLayout(capacity, 1, per_head=True) for capacity in capacities)
    tile_rows = max(capacities[0] // 2, _CAPACITY_ALIGN)
    most = chunk_size * -(-num_features // tile_rows)
    levels = sorted({-(-most * level // packed_levels) for level in range(1, packed_levels + 1)})
    return tuple(ChunkLayout(tile_rows, tiles, per_head=False) for tiles in levels)


def neuron_layouts(hidden: int, chunk_size: int, num_levels: int | None = None) -> tuple[ChunkLayout, ...]:
    """The layouts a chunk of heads that prune neurons may train in: per head, a capacity of neurons.

    A head keeping k of the H neurons of its pruned layer(s) (the larger count
    with both layers) trains at the smallest of ``capacity_levels(H, levels)``
    >= k (16 levels for chunks of one head, 8 for larger ones, as for features).
    """
    default = ONE_HEAD_CAPACITY_LEVELS if chunk_size == 1 else PACKED_CAPACITY_LEVELS
    capacities = capacity_levels(hidden, num_levels or default)
    return tuple(ChunkLayout(capacity, chunk_size, per_head=True) for capacity in capacities)


def choose_chunk_size(
    population: int,
    num_features: int,
    num_classes: int,
    hidden: int,
    train_config: TrainConfig,
    engine: EngineConfig,
    platform: str,
    hidden_layers: int = 1,
) -> int:
    """Heads trained at once (batched) inside one chunk, on one device.

    ``engine.chunk_size`` if set (capped at the population). Otherwise 1 on a
    CPU; elsewhere as many heads as ``engine.memory_budget_mb`` allows per
    ``memory.training_bytes``, balanced so that the last chunk is nearly full (P =
    100 with room for 80 gives 2 chunks of 50, not 80 + 20 padded to 160), and
    at most ``engine.max_heads_per_chunk``, except that a population at most a
    quarter above that cap (a search generation of up to 40 heads at the cap of
    32; the authors' budget run trains generations of 34) trains as one chunk
    rather than two half-empty ones.
    """
    if engine.chunk_size != AUTO:
        return max(1, min(engine.chunk_size, population))
    if platform == "cpu":
        return 1
    per_head = memory.training_bytes(num_features, num_classes, hidden, train_config, hidden_layers)
    memory_fits = memory.heads_within(engine.memory_budget_mb, per_head)
    cap = engine.max_heads_per_chunk
    if population <= min(memory_fits, cap + cap // 4):
        return population
    fits = min(memory_fits, cap)
    num_chunks = -(-population // fits)
    return -(-population // num_chunks)


def gathers_features(engine: EngineConfig, train_config: TrainConfig) -> bool:
    """Whether heads train on their kept features only (``EngineConfig.gather_features``)."""
    separable = train_config.optimizer in ROW_SEPARABLE_OPTIMIZERS
    if engine.gather_features is True and not separable:
        raise ValueError(
            f"EngineConfig.gather_features needs an optimizer from {sorted(ROW_SEPARABLE_OPTIMIZERS)}, "
            f"got {train_config.optimizer!r}"
        )
    return separable if engine.gather_features == AUTO else engine.gather_features


def _step(engine: EngineConfig, train_config: TrainConfig, layout: ChunkLayout, hidden: int,
          platform: str) -> str:
    """``engine.step`` for chunks stored as ``layout`` (the fused kernel: packed, plain sgd only)."""
    if layout.per_head or engine.step == "xla":
        return "xla"
    # The kernel's learning rate is a constant: no decay.
    plain_sgd = (train_config.optimizer == "sgd" and not train_config.optimizer_options
                 and not train_config.lr_decay)
    if engine.step == "fused_sgd" and not plain_sgd:
        raise ValueError(
            "EngineConfig.step 'fused_sgd' needs TrainConfig.optimizer 'sgd' without optimizer_options "
            f"or lr_decay, got {train_config.optimizer!r} with {dict(train_config.optimizer_options)}, "
            f"lr_decay {train_config.lr_decay:g}"
        )
    problem = None
    if platform == "gpu":
        problem = fused_sgd.supported(layout.tile_rows, train_config.batch_size, hidden)
    if engine.step == "fused_sgd":
        if problem:
            raise ValueError(f"EngineConfig.step 'fused_sgd': the kernel cannot compile this chunk: "
                             f"{problem}")
        return "fused_sgd"
    return "fused_sgd" if platform == "gpu" and plain_sgd and problem is None else "xla"


def _kernel_transposed(engine: EngineConfig, layout: ChunkLayout, platform: str) -> bool:
    if engine.kernel_layout == "hidden_by_kept" and not layout.per_head:
        raise ValueError("EngineConfig.kernel_layout 'hidden_by_kept' is for chunks of one head per layout "
                         "(packed chunks store (c, H)); use 'auto' or 'kept_by_hidden'")
    if engine.kernel_layout == AUTO:
        return layout.per_head and platform == "cpu"
    return engine.kernel_layout == "hidden_by_kept"


def make_plan(
    engine: EngineConfig,
    train_config: TrainConfig,
    *,
    population: int,
    num_features: int,
    num_classes: int,
    hidden: int,
    platform: str,
    prune: str = "features",
    hidden_layers: int = 1,
) -> TrainingPlan:
    """``engine`` resolved for a population of ``population`` heads per device on ``platform``.

    ``prune`` and ``hidden_layers`` are the head's (``HeadConfig``): a head
    whose chromosome prunes neurons trains on every feature and, when it
    gathers (``gather_features``: kept units), on its kept neurons only, in
    per-head layouts over H (``neuron_layouts``); otherwise its pruned
    neurons' activations are held at zero in the full-width layers.

    Raises ValueError, naming the field, where an explicit setting cannot
    apply (``gather_features`` with another optimizer, ``step`` 'fused_sgd'
    with another optimizer or shapes Triton cannot compile on a GPU,
    ``kernel_layout`` 'hidden_by_kept' for packed chunks).
    """
    chunk_size = choose_chunk_size(population, num_features, num_classes, hidden, train_config, engine,
                                   platform, hidden_layers)
    levels = None if engine.capacity_levels == AUTO else engine.capacity_levels
    gather = gathers_features(engine, train_config)
    neurons = gather and prune != "features"
    if neurons:
        layouts = neuron_layouts(hidden, chunk_size, levels)
    else:
        layouts = chunk_layouts(num_features, chunk_size, gather and prune == "features", levels)
    tile_sum = engine.tile_sum if engine.tile_sum != AUTO else ("gather" if platform == "gpu" else "scatter")
    command_buffers = chunk_size == 1 if engine.command_buffers == AUTO else engine.command_buffers
    return TrainingPlan(
        platform=platform,
        chunk_size=chunk_size,
        layouts=layouts,
        step="xla" if neurons else _step(engine, train_config, layouts[0], hidden, platform),
        tile_sum=tile_sum,
        kernel_transposed=_kernel_transposed(engine, layouts[0], platform),
        command_buffers=command_buffers,
        neurons=neurons,
    )
