"""NSGA-II over binary feature masks, with evosax's interface.

The search of MO-EvoPruneDeepTL (Poyatos et al., arXiv 2302.10253; docs/PROTOCOL.md
"NSGA-II"): non-dominated sorting and crowding distance (Deb, Pratap, Agarwal and
Meyarivan, "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE
TEC 6(2), 2002), binary tournament on (rank, crowding), uniform crossover,
bit-flip mutation and the authors' initialisation. Every objective is minimised.

The file is in three layers, each usable on its own:

* ranking and crowding: ``non_dominated_rank``, ``crowding_distance``,
  ``select_survivors`` (pymoo's ``RankAndCrowding`` with deterministic ties);
* operators on (N, D) bool masks: ``init_masks``, ``binary_tournament``,
  ``uniform_crossover``, ``bit_flip_mutation``, ``repair_min_active``,
  ``find_duplicates``, ``fill_duplicate_fitness``;
* the strategy ``NSGA2`` with evosax's ``init / ask / tell`` (jit-compiled, static
  ``self``, explicit keys, ``flax.struct`` state and params).

A single-objective run (the predecessor EvoPruneDeepTL) can use any evosax
population-based algorithm on continuous genomes and ``masks_from_genomes``.

No Python loop over individuals or fronts: everything is array code that runs
under ``jax.jit``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------

RANK_METHODS = ("auto", "sweep", "chain", "peel")


def _as_objectives(fitness: jax.Array) -> jax.Array:
    """(N, M) floating objectives with NaN mapped to +inf and -0.0 to +0.0."""
    fitness = jnp.asarray(fitness)
    fitness = fitness.astype(jnp.result_type(fitness.dtype, jnp.float32))
    if fitness.ndim != 2:
        raise ValueError(f"objectives must be an (N, M) array, got shape {fitness.shape}")
    fitness = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)
    # -0.0 == 0.0 for every comparison here, but lax.sort orders -0.0 first.
    return jnp.where(fitness == 0, jnp.zeros((), fitness.dtype), fitness)


def dominance_matrix(fitness: jax.Array) -> jax.Array:
    """Pareto dominance between all pairs, built one objective at a time.

    Args:
      fitness: (N, M) float objectives, minimised.

    Returns:
      (N, N) bool, ``[i, j]`` true when i dominates j: no worse in every objective
      and better in one. Identical points do not dominate each other. Memory: N^2
      bytes (400 MB at N = 20,000); no (N, N, M) intermediate is formed.
    """
    fitness = _as_objectives(fitness)
    no_worse = jnp.ones((fitness.shape[0],) * 2, bool)
    better = jnp.zeros((fitness.shape[0],) * 2, bool)
    for m in range(fitness.shape[1]):
        column = fitness[:, m]
        no_worse = no_worse & (column[:, None] <= column[None, :])
        better = better | (column[:, None] < column[None, :])
    return no_worse & better


def _rank_by_peeling(fitness: jax.Array) -> jax.Array:
    """Fronts peeled off the dominance matrix by counting remaining dominators."""
    dominates = dominance_matrix(fitness)
    num_dominators = jnp.sum(dominates, axis=0, dtype=jnp.int32)
    rank = jnp.full(fitness.shape[0], -1, jnp.int32)

    def unranked_left(carry):
        return jnp.any(carry[1] < 0)

    def peel_front(carry):
        num_dominators, rank, front_index = carry
        front = (num_dominators == 0) & (rank < 0)
        rank = jnp.where(front, front_index, rank)
        num_dominators = num_dominators - jnp.sum(dominates & front[:, None], axis=0, dtype=jnp.int32)
        return num_dominators, rank, front_index + 1

    _, rank, _ = lax.while_loop(unranked_left, peel_front, (num_dominators, rank, jnp.int32(0)))
    return rank


def _lexicographic_order(fitness: jax.Array) -> jax.Array:
    """(N,) int32 permutation sorting the rows lexicographically; ties by index."""
    num_points, num_objectives = fitness.shape
    operands = (*(fitness[:, m] for m in range(num_objectives)), jnp.arange(num_points, dtype=jnp.int32))
    return lax.sort(operands, num_keys=num_objectives, is_stable=True)[-1]


def _rank_by_sweep(fitness: jax.Array) -> jax.Array:
    """Two objectives: one sweep in lexicographic order, O(N log N).

    After sorting by (f0, f1), a point is dominated by some member of front k iff
    it is dominated by the member of front k placed last so far (the one with the
    smallest f1), and these "tails" have non-decreasing f1 over k. A point's rank
    is then the number of tails with f1 <= its own f1 (a binary search); equal
    points are adjacent in this order and share the rank of the first copy.
    """
    num_points = fitness.shape[0]
    order = _lexicographic_order(fitness)
    sorted_fitness = fitness[order]
    repeats_previous = jnp.concatenate(
        [jnp.zeros((1,), bool), jnp.all(sorted_fitness[1:] == sorted_fitness[:-1], axis=1)]
    )

    def place(carry, point):
        tails, num_fronts, previous_rank = carry
        f1, is_repeat = point
        rank = jnp.searchsorted(tails, f1, side="right", method="scan_unrolled").astype(jnp.int32)
        rank = jnp.where(is_repeat, previous_rank, jnp.minimum(rank, num_fronts))
        tails = tails.at[rank].set(jnp.where(is_repeat, tails[rank], f1))
        return (tails, jnp.maximum(num_fronts, rank + 1), rank), rank

    start = (jnp.full((num_points,), jnp.inf, fitness.dtype), jnp.int32(0), jnp.int32(0))
    _, sorted_rank = lax.scan(place, start, (sorted_fitness[:, 1], repeats_previous))
    return jnp.zeros((num_points,), jnp.int32).at[order].set(sorted_rank)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _rank_by_chain(fitness: jax.Array, block: int | None, chunk: int | None) -> jax.Array:
    """Any number of objectives: longest dominating chain, in blocks, O(N * chunk) memory.

    A point's non-domination rank (peeling order) equals the length of the
    longest chain of points dominating it: rank(j) = 1 + max rank(i) over i
    dominating j, 0 if none. In lexicographic order every dominator comes first,
    so the ranks are filled in ``block``-sized pieces from the front: a piece's
    lower bound comes from all earlier points, read in ``chunk``-sized tiles, and
    the dominance inside the piece is resolved by relaxation to a fixed point.
    Between two distinct points in this order, "earlier and no worse in
    objectives 1..M-1" already means "dominates", so a pair costs M - 1
    comparisons; points not ranked yet hold rank -1 and so count for nothing,
    which makes "earlier" free outside the block. Repeated points never act as
    dominators and take the rank of their first copy at the end.
    """
    num_points, num_objectives = fitness.shape
    # Measured best on 2 CPU cores from N = 2,000 to 20,000 (M = 3).
    block = 64 if block is None else block
    chunk = 512 if chunk is None else chunk
    padded = _round_up(num_points, block)
    # A tile as long as the whole array is about 4x slower on XLA:CPU (measured),
    # and one reaching past the end is clamped: keep tiles shorter than the array.
    chunk = max(1, min(chunk, padded - block)) if padded > block else padded
    order = _lexicographic_order(fitness)
    sorted_fitness = fitness[order]
    first_copy = jnp.concatenate(
        [jnp.ones((1,), bool), jnp.any(sorted_fitness[1:] != sorted_fitness[:-1], axis=1)]
    )
    if num_objectives == 1:
        # Every distinct smaller value dominates: the rank is the dense rank.
        dense_rank = (jnp.cumsum(first_copy) - 1).astype(jnp.int32)
        return jnp.zeros((num_points,), jnp.int32).at[order].set(dense_rank)
    padding = jnp.full((padded - num_points, num_objectives), jnp.inf, fitness.dtype)
    # Objective-major (M, padded): the tiles below read contiguous rows.
    values = jnp.concatenate([sorted_fitness, padding]).T
    # Only first copies act as dominators: repeats and padding keep rank -1.
    is_source = jnp.concatenate([first_copy, jnp.zeros((padded - num_points,), bool)])
    position = jnp.arange(padded, dtype=jnp.int32)

    def no_worse_after_first(source_values, target_values):
        # (S, T) bool: source no worse than target in objectives 1..M-1; for a source
        # earlier in lexicographic order (and distinct) this means it dominates.
        no_worse = source_values[1][:, None] <= target_values[1][None, :]
        for m in range(2, num_objectives):
            no_worse = no_worse & (source_values[m][:, None] <= target_values[m][None, :])
        return no_worse

    def longest_chain(dominates, source_rank):
        # (T,) float32: 1 + max rank over dominating sources, 0 when none (or when
        # the only ones are unranked, rank -1).
        return jnp.max(jnp.where(dominates, source_rank[:, None] + 1.0, 0.0), axis=0)

    def rank_block(block_index, rank):
        start = block_index * block
        block_values = lax.dynamic_slice_in_dim(values, start, block, axis=1)
        block_position = lax.dynamic_slice_in_dim(position, start, block)
        block_is_source = lax.dynamic_slice_in_dim(is_source, start, block)

        def from_tile(tile_index, lower_bound):
            # Points not ranked yet (this block and later) still hold rank -1, so they
            # add nothing: no position test per pair. A tile clamped at the end of
            # the array overlaps the one before it: harmless for a maximum.
            tile_start = tile_index * chunk
            no_worse = no_worse_after_first(
                lax.dynamic_slice_in_dim(values, tile_start, chunk, axis=1), block_values
            )
            tile_rank = lax.dynamic_slice_in_dim(rank, tile_start, chunk)
            return jnp.maximum(lower_bound, longest_chain(no_worse, tile_rank))

        num_tiles = (start + chunk - 1) // chunk
        lower_bound = lax.fori_loop(0, num_tiles, from_tile, jnp.zeros((block,), jnp.float32))
        earlier_source = (block_position[:, None] < block_position[None, :]) & block_is_source[:, None]
        inside = earlier_source & no_worse_after_first(block_values, block_values)

        def relax(carry):
            block_rank, _ = carry
            updated = jnp.maximum(lower_bound, longest_chain(inside, block_rank))
            return updated, jnp.any(updated != block_rank)

        block_rank, _ = lax.while_loop(lambda carry: carry[1], relax, (lower_bound, jnp.bool_(True)))
        block_rank = jnp.where(block_is_source, block_rank, -1.0)
        return lax.dynamic_update_slice_in_dim(rank, block_rank, start, 0)

    unranked = jnp.full((padded,), -1.0, jnp.float32)
    sorted_rank = lax.fori_loop(0, padded // block, rank_block, unranked)
    first_position = lax.cummax(jnp.where(first_copy, jnp.arange(num_points, dtype=jnp.int32), 0))
    sorted_rank = sorted_rank[first_position].astype(jnp.int32)
    return jnp.zeros((num_points,), jnp.int32).at[order].set(sorted_rank)


def non_dominated_rank(
    fitness: jax.Array, method: str = "auto", block: int | None = None, chunk: int | None = None
) -> jax.Array:
    """Non-domination rank of every point (Deb et al. 2002, fast non-dominated sort).

    Rank 0 is the Pareto front, rank 1 the front of what is left, and so on;
    identical points share a rank. Equal to pymoo's
    ``NonDominatedSorting().do(F, return_rank=True)[1]`` on finite objectives
    (pymoo 0.6.2 delegates to moocore, which mis-ranks +inf; here +inf compares
    as IEEE says, as a larger finite value would).

    Args:
      fitness: (N, M) float objectives, minimised. NaN counts as +inf.
      method: the algorithm; all give the same ranks.
        ``"sweep"`` (M = 2 only): one lexicographic sweep with a binary search per
          point; O(N log N) time, O(N) memory.
        ``"chain"`` (any M): longest dominating chain in lexicographic order,
          blocked; O(N^2 (M - 1)) time, O(N M + block * chunk) memory. No (N, N)
          array, so N is limited by time only (N = 20,000, M = 3: about 0.1 to
          0.3 s on 2 CPU cores).
        ``"peel"`` (any M): the dominance matrix (``dominance_matrix``), fronts
          peeled in a ``lax.while_loop`` by counting remaining dominators; one pass
          over the matrix per front. Memory N^2 bytes + O(N): 400 MB at N = 20,000,
          10 GB at N = 100,000. Fully parallel (a candidate for accelerators; not
          benchmarked there), slow on CPU.
        ``"auto"``: ``"sweep"`` for M = 2, else ``"peel"`` up to N = 256 (at most
          64 KB) and ``"chain"`` above.
      block, chunk: tile sizes of ``"chain"`` (None: 64 and 512).

    Returns:
      (N,) int32 ranks.
    """
    if method not in RANK_METHODS:
        raise ValueError(f"method must be one of {RANK_METHODS}, got {method!r}")
    shape = jnp.shape(fitness)
    if len(shape) != 2:
        raise ValueError(f"objectives must be an (N, M) array, got shape {shape}")
    num_points, num_objectives = shape
    if method == "auto":  # resolved here, so that "auto" shares the compilation of its choice
        method = "sweep" if num_objectives == 2 else "peel" if num_points <= 256 else "chain"
    if method == "sweep" and num_objectives != 2:
        raise ValueError(f'method="sweep" needs 2 objectives, got {num_objectives}')
    if method != "chain":
        block = chunk = None
    return _non_dominated_rank(fitness, method, block, chunk)


@partial(jax.jit, static_argnames=("method", "block", "chunk"))
def _non_dominated_rank(fitness: jax.Array, method: str, block: int | None, chunk: int | None) -> jax.Array:
    fitness = _as_objectives(fitness)
    if fitness.shape[0] == 0:
        return jnp.zeros((0,), jnp.int32)
    if method == "sweep":
        return _rank_by_sweep(fitness)
    if method == "peel":
        return _rank_by_peeling(fitness)
    return _rank_by_chain(fitness, block, chunk)


# ---------------------------------------------------------------------------
# Crowding distance and survival
# ---------------------------------------------------------------------------


@jax.jit
def crowding_distance(fitness: jax.Array, rank: jax.Array) -> jax.Array:
    """Crowding distance of every point within its own front (Deb et al. 2002).

    pymoo's conventions exactly (``calc_crowding_distance`` as ``RankAndCrowding``
    calls it, without removing duplicates): within a front, per objective, the
    points are sorted stably (ties keep index order) and each gets
    (next - previous) / (max - min), the first and last of the order an infinite
    side; a side that is NaN (an objective with zero range) counts 0; the sum
    over objectives is divided by M. Fronts of one or two points get +inf.
    Equal points therefore get the distances their sorted positions give them.

    All fronts at once: one sort by (rank, objective, index) per objective.

    Args:
      fitness: (N, M) float objectives, minimised; NaN counts as +inf.
      rank: (N,) int front index of each point, in [0, N) (from
        ``non_dominated_rank``).

    Returns:
      (N,) float crowding distances (larger is less crowded).
    """
    fitness = _as_objectives(fitness)
    num_points, num_objectives = fitness.shape
    rank = jnp.asarray(rank, jnp.int32)
    index = jnp.arange(num_points, dtype=jnp.int32)
    inf = jnp.asarray(jnp.inf, fitness.dtype)
    # Sorted by rank first, every objective's order has the same front boundaries.
    front_size = jnp.zeros((num_points,), jnp.int32).at[rank].add(1)
    sorted_rank = jnp.sort(rank)
    front_start = (jnp.cumsum(front_size) - front_size)[sorted_rank]
    front_end = front_start + front_size[sorted_rank] - 1
    opens_front = index == front_start
    closes_front = index == front_end
    # (M, N): objective m's values sorted by (rank, value, index).
    _, values, orders = lax.sort(
        (jnp.broadcast_to(rank, fitness.T.shape), fitness.T, jnp.broadcast_to(index, fitness.T.shape)),
        dimension=1,
        num_keys=2,
        is_stable=True,
    )
    previous = jnp.where(opens_front, -inf, jnp.roll(values, 1, axis=1))
    following = jnp.where(closes_front, inf, jnp.roll(values, -1, axis=1))
    # Sorted within a front: its minimum opens it and its maximum closes it.
    extent = values[:, front_end] - values[:, front_start]
    extent = jnp.where(extent == 0, jnp.nan, extent)
    to_previous = (values - previous) / extent
    to_following = (following - values) / extent
    sides = jnp.where(jnp.isnan(to_previous), 0.0, to_previous) + jnp.where(
        jnp.isnan(to_following), 0.0, to_following
    )
    per_objective = jnp.zeros_like(sides).at[jnp.arange(num_objectives)[:, None], orders].set(sides)
    total = per_objective[0]
    for m in range(1, num_objectives):  # in objective order, as pymoo sums
        total = total + per_objective[m]
    distance = total / num_objectives
    return jnp.where(front_size[rank] <= 2, inf, distance)


@partial(jax.jit, static_argnames=("num_survivors",))
def select_survivors(fitness: jax.Array, num_survivors: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """NSGA-II survival: the best ``num_survivors`` by rank, then larger crowding.

    Ranks and crowding distances are those of pymoo's ``RankAndCrowding``
    (crowding computed per whole front, the splitting front included).
    Ties are broken deterministically, unlike pymoo's random choice: equal
    (rank, crowding) go to the lower index. In ``NSGA2.tell`` the parents come
    first, so an offspring must be strictly better to displace an incumbent.

    Args:
      fitness: (N, M) float objectives, minimised; NaN counts as +inf.
      num_survivors: k <= N.

    Returns:
      survivors: (k,) int32 indices into ``fitness``, best first.
      rank: (N,) int32 ranks of all points.
      crowding: (N,) float crowding distances of all points.
    """
    fitness = _as_objectives(fitness)
    num_points = fitness.shape[0]
    if not 0 <= num_survivors <= num_points:
        raise ValueError(f"num_survivors must be in [0, {num_points}], got {num_survivors}")
    rank = non_dominated_rank(fitness)
    crowding = crowding_distance(fitness, rank)
    index = jnp.arange(num_points, dtype=jnp.int32)
    order = lax.sort((rank, -crowding, index), num_keys=3, is_stable=True)[-1]
    return order[:num_survivors], rank, crowding


# ---------------------------------------------------------------------------
# Operators on (N, D) bool masks
# ---------------------------------------------------------------------------


def _random_positions(key: jax.Array, priority_first: jax.Array) -> jax.Array:
    """(N, D) int32: each row's positions 0..D-1 in a random order, ``priority_first`` entries first.

    Entry (n, d) is where bit d of row n lands in that order; rows are independent
    and uniform (31 random bits per entry; ties, about D^2 / 2^32 per row, go to the
    lower index). One random draw and two sorts: cheaper to compile than
    ``jax.random.permutation``.
    """
    random_bits = jax.random.bits(key, priority_first.shape, jnp.uint32) >> 1
    sort_key = random_bits | jnp.where(priority_first, jnp.uint32(0), jnp.uint32(1 << 31))
    return jnp.argsort(jnp.argsort(sort_key, axis=1), axis=1).astype(jnp.int32)


@jax.jit
def repair_min_active(key: jax.Array, masks: jax.Array, min_active: int | jax.Array) -> jax.Array:
    """Masks with fewer than ``min_active`` ones get random extra ones.

    A mask with c < min_active ones gets min_active - c of its zeros, chosen
    uniformly at random, set to one; its ones are kept; masks with enough ones
    are unchanged. ``min_active`` above D is clipped to D (all ones).

    Args:
      key: PRNG key.
      masks: (N, D) bool.
      min_active: int, fewest ones a mask may have (0: no repair).

    Returns:
      (N, D) bool.
    """
    masks = jnp.asarray(masks, bool)
    num_dims = masks.shape[1]
    missing = jnp.clip(jnp.minimum(min_active, num_dims) - jnp.sum(masks, axis=1), 0, None)
    # The zeros first, in random order: the first ``missing`` of them are set.
    return masks | (_random_positions(key, ~masks) < missing[:, None])


@jax.jit
def repair_max_active(key: jax.Array, masks: jax.Array, max_active: int | jax.Array | None) -> jax.Array:
    """Masks with more than ``max_active`` ones lose randomly chosen ones.

    A mask with c > max_active ones gets c - max_active of its ones, chosen
    uniformly at random, set to zero; its zeros are kept; masks with few enough
    ones are unchanged. The mirror of ``repair_min_active``, one sort for the
    whole population (no loop over masks). ``None`` (no limit) returns the
    masks as they are: a structural choice, so it compiles apart.

    Args:
      key: PRNG key.
      masks: (N, D) bool.
      max_active: int, most ones a mask may keep, or None.

    Returns:
      (N, D) bool.
    """
    masks = jnp.asarray(masks, bool)
    if max_active is None:
        return masks
    excess = jnp.clip(jnp.sum(masks, axis=1) - jnp.maximum(max_active, 0), 0, None)
    # The ones first, in random order: the first ``excess`` of them are cleared.
    return masks & ~(_random_positions(key, masks) < excess[:, None])


@jax.jit
def seed_population(
    key: jax.Array, population: jax.Array, seeds: jax.Array, min_active: int | jax.Array = 0
) -> jax.Array:
    """A population whose first K members are ``seeds`` (a warm start), repaired to ``min_active``.

    The other P - K members stay as drawn, so a warm start changes only the
    rows it names. Seeds below ``min_active`` get random extra ones
    (``repair_min_active``) as any mask would.

    Args:
      key: PRNG key (for the repair).
      population: (P, D) bool, e.g. from ``init_masks``.
      seeds: (K, D) bool (or 0/1), K <= P.
      min_active: fewest ones a mask may have.

    Returns:
      (P, D) bool.
    """
    population = jnp.asarray(population, bool)
    seeds = jnp.asarray(seeds).astype(bool)
    if seeds.ndim != 2 or seeds.shape[1] != population.shape[1] or seeds.shape[0] > population.shape[0]:
        raise ValueError(f"seeds must be (K <= {population.shape[0]}, {population.shape[1]}), "
                         f"got shape {seeds.shape}")
    return population.at[: seeds.shape[0]].set(repair_min_active(key, seeds, min_active))


@partial(jax.jit, static_argnames=("population_size", "num_dims"))
def init_masks(
    key: jax.Array, population_size: int, num_dims: int, min_active: int | jax.Array = 0
) -> jax.Array:
    """The authors' initialisation: each mask keeps a random fraction of features.

    Each individual draws p ~ U(0, 1) and gets exactly round(p * D) ones at
    uniformly random positions (docs/PROTOCOL.md; round half to even). With
    ``min_active`` > 0, masks below it are then repaired (``repair_min_active``).

    The draws: ``fraction_key, position_key, repair_key = jax.random.split(key, 3)``,
    ``p = jax.random.uniform(fraction_key, (population_size,))``.

    Args:
      key: PRNG key.
      population_size: P.
      num_dims: D, mask length.
      min_active: fewest ones (0: exactly round(p * D)).

    Returns:
      (P, D) bool.
    """
    fraction_key, position_key, repair_key = jax.random.split(key, 3)
    fraction = jax.random.uniform(fraction_key, (population_size,))
    num_ones = jnp.round(fraction * num_dims).astype(jnp.int32)
    everywhere = jnp.ones((population_size, num_dims), bool)
    masks = _random_positions(position_key, everywhere) < num_ones[:, None]
    return repair_min_active(repair_key, masks, min_active)


@partial(jax.jit, static_argnames=("num_winners",))
def binary_tournament(key: jax.Array, rank: jax.Array, crowding: jax.Array, num_winners: int) -> jax.Array:
    """Binary tournaments on (rank, crowding distance) (Deb et al. 2002).

    Each tournament draws two distinct members uniformly; the lower rank wins,
    then the larger crowding distance, then a fair coin.

    Args:
      key: PRNG key.
      rank: (P,) int ranks, P >= 2.
      crowding: (P,) float crowding distances.
      num_winners: tournaments to hold.

    Returns:
      (num_winners,) int32 indices of the winners.
    """
    size = rank.shape[0]
    # One draw: the first member, the offset to the second (never 0), a coin.
    first, offset, coin = jax.random.randint(
        key, (3, num_winners), jnp.array([[0], [1], [0]]), jnp.array([[size], [size], [2]])
    )
    second = (first + offset) % size
    coin = coin == 1
    first_wins = (rank[first] < rank[second]) | (
        (rank[first] == rank[second])
        & ((crowding[first] > crowding[second]) | ((crowding[first] == crowding[second]) & coin))
    )
    return jnp.where(first_wins, first, second).astype(jnp.int32)


@jax.jit
def uniform_crossover(
    key: jax.Array,
    parents_a: jax.Array,
    parents_b: jax.Array,
    crossover_rate: float | jax.Array,
    swap_rate: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Uniform crossover of mask pairs (jMetal's / pymoo's ``UniformCrossover``).

    With probability ``crossover_rate`` a pair is recombined: each gene is
    swapped between the two children with probability ``swap_rate``. Otherwise
    the children are copies of the parents.

    Args:
      key: PRNG key.
      parents_a, parents_b: (K, D) bool, the pairs.
      crossover_rate: per-pair probability of recombination.
      swap_rate: per-gene swap probability.

    Returns:
      (children_a, children_b): (K, D) bool each; every gene of a child comes
      from one of its parents at the same position.
    """
    num_pairs, num_dims = parents_a.shape
    draws = jax.random.uniform(key, (num_pairs, num_dims + 1))  # one per gene, one per pair
    swap = (draws[:, -1:] < crossover_rate) & (draws[:, :-1] < swap_rate)
    return jnp.where(swap, parents_b, parents_a), jnp.where(swap, parents_a, parents_b)


@jax.jit
def bit_flip_mutation(key: jax.Array, masks: jax.Array, mutation_rate: float | jax.Array) -> jax.Array:
    """Flips each bit independently with probability ``mutation_rate`` (1/D in the paper).

    Args:
      key: PRNG key.
      masks: (N, D) bool.
      mutation_rate: per-bit flip probability.

    Returns:
      (N, D) bool.
    """
    masks = jnp.asarray(masks, bool)
    return masks ^ (jax.random.uniform(key, masks.shape) < mutation_rate)


def _equal_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """(A, B) bool: rows of two bool matrices equal. Exact for D < 2^24."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    shared = jnp.dot(a, b.T, precision=lax.Precision.HIGHEST)
    return (shared == jnp.sum(a, axis=1)[:, None]) & (shared == jnp.sum(b, axis=1)[None, :])


@jax.jit
def find_duplicates(offspring: jax.Array, parents: jax.Array) -> jax.Array:
    """Which offspring repeat a parent or an earlier offspring.

    Args:
      offspring: (K, D) bool.
      parents: (P, D) bool.

    Returns:
      (K,) int32 ``duplicate_of``: an index into the rows of
      ``concatenate([parents, offspring])``: i in [0, P) when offspring k equals
      parent i (the first such parent), P + j when it equals no parent but an
      earlier offspring j < k (the first such; that one is then new), -1 when it
      is new. A search loop needs to evaluate only rows with -1
      (``fill_duplicate_fitness`` fills in the rest).
    """
    offspring = jnp.asarray(offspring, bool)
    parents = jnp.asarray(parents, bool)
    num_offspring, num_parents = offspring.shape[0], parents.shape[0]
    equals_parent = _equal_rows(offspring, parents)
    earlier = jnp.arange(num_offspring)[None, :] < jnp.arange(num_offspring)[:, None]
    equals_earlier = _equal_rows(offspring, offspring) & earlier
    return jnp.where(
        jnp.any(equals_parent, axis=1),
        jnp.argmax(equals_parent, axis=1),
        jnp.where(jnp.any(equals_earlier, axis=1), num_parents + jnp.argmax(equals_earlier, axis=1), -1),
    ).astype(jnp.int32)


@jax.jit
def fill_duplicate_fitness(
    fitness: jax.Array, duplicate_of: jax.Array, parent_fitness: jax.Array
) -> jax.Array:
    """Offspring objectives with every duplicate's row taken from its original.

    Args:
      fitness: (K, M) offspring objectives; rows of duplicates are ignored
        (may be NaN or anything).
      duplicate_of: (K,) int32 from ``find_duplicates``.
      parent_fitness: (P, M) the parents' objectives.

    Returns:
      (K, M) objectives.
    """
    fitness = jnp.asarray(fitness)
    known = jnp.concatenate([jnp.asarray(parent_fitness, fitness.dtype), fitness])
    return jnp.where((duplicate_of >= 0)[:, None], known[jnp.maximum(duplicate_of, 0)], fitness)


def masks_from_genomes(genomes: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Binary masks from continuous genomes: a feature is kept where its gene > threshold.

    The bridge for single-objective runs with any evosax population-based
    algorithm (e.g. ``evosax.algorithms.SimpleGA``), as in EvoPruneDeepTL: the
    algorithm evolves (P, D) float genomes, the loop evaluates
    ``masks_from_genomes(genomes)`` and tells it the (P,) error.

    Args:
      genomes: (..., D) float.
      threshold: float.

    Returns:
      (..., D) bool.
    """
    return jnp.asarray(genomes) > threshold


# ---------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------


@struct.dataclass
class Params:
    """NSGA-II operator settings (the paper's values by default).

    No defaults here (as in evosax): take ``NSGA2.default_params`` or
    ``params_from_config``, and ``.replace(...)`` what should differ.

    Attributes:
      crossover_rate: probability that a pair is recombined (paper: 1.0).
      swap_rate: per-gene swap probability in uniform crossover (paper: 0.5).
      mutation_rate: per-bit flip probability (paper: 1 / D).
      min_active: fewest ones an offspring mask may have; masks below are
        repaired by ``repair_min_active`` (default 1; 0 allows the empty mask).
      max_active: most ones a mask may keep (``SearchConfig.max_features``);
        masks above are repaired by ``repair_max_active``. The one field with a
        default, None (no limit), so that parameter sets written before it keep
        their meaning and their compiled programs.
    """

    crossover_rate: float
    swap_rate: float
    mutation_rate: float
    min_active: int
    max_active: int | None = None


@struct.dataclass
class State:
    """NSGA-II state; every field an array, so it checkpoints as a pytree.

    Attributes:
      population: (P, D) bool, the current parents.
      fitness: (P, M) float, their objectives (minimised; NaN stored as +inf).
      rank: (P,) int32, non-domination rank computed at the last survival
        (ranks do not change when the survivors are taken).
      crowding: (P,) float, crowding distance in its front at the last survival
        (computed on the whole front before truncation, as pymoo stores it).
      duplicate_of: (K,) int32, for the offspring of the last ``ask``: see
        ``find_duplicates`` (-1 before the first ask).
      best_solution: (M, D) bool, row m the best mask for objective m among
        everything evaluated so far (evosax's best-so-far, one per objective):
        lowest objective m, ties broken by the other objectives in order, then
        by the earliest seen.
      best_fitness: (M, M) float, row m the objectives of ``best_solution[m]``;
        its diagonal is the ideal point of everything evaluated.
      generation_counter: int32, number of ``tell`` calls.
    """

    population: jax.Array
    fitness: jax.Array
    rank: jax.Array
    crowding: jax.Array
    duplicate_of: jax.Array
    best_solution: jax.Array
    best_fitness: jax.Array
    generation_counter: jax.Array


def params_from_config(search_config: Any, num_dims: int) -> Params:
    """``Params`` from a ``config.SearchConfig`` (mutation_rate None: 1 / D; max_features None: no limit)."""
    mutation_rate = search_config.mutation_rate
    max_features = getattr(search_config, "max_features", None)
    return Params(
        crossover_rate=float(search_config.crossover_rate),
        swap_rate=float(search_config.swap_rate),
        mutation_rate=float(1.0 / num_dims if mutation_rate is None else mutation_rate),
        min_active=int(search_config.min_active),
        max_active=None if max_features is None else int(max_features),
    )


def _per_objective_best(population: jax.Array, fitness: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(M, D) masks and (M, M) objectives: per objective m, the row lowest in m,
    ties broken by the other objectives in order, then by the lower index."""
    num_objectives = fitness.shape[1]
    best = []
    for m in range(num_objectives):
        candidates = jnp.ones(fitness.shape[0], bool)
        for key in [m] + [other for other in range(num_objectives) if other != m]:
            masked = jnp.where(candidates, fitness[:, key], jnp.inf)
            candidates = candidates & (masked == jnp.min(masked))
        best.append(jnp.argmax(candidates))
    best = jnp.stack(best)
    return population[best], fitness[best]


class NSGA2:
    """NSGA-II on binary masks (Deb et al. 2002), with evosax's interface.

    ``init``, ``ask`` and ``tell`` are jit-compiled with ``self`` static, keys are
    explicit, state and params are ``flax.struct`` dataclasses and fitness is
    minimised, as in evosax. Fitness is (P, M): the base evosax ``tell`` assumes
    one objective, so this class does not derive from it.

    One generation: ``ask`` picks parents by binary tournament on (rank,
    crowding), recombines them by uniform crossover, flips bits, repairs masks
    below ``min_active`` and above ``max_active``, and records in
    ``state.duplicate_of`` which offspring repeat a parent or an earlier
    offspring; ``tell`` replaces the objectives of
    those with the recorded ones (a mask has one set of objectives) and keeps
    the best P of parents + offspring (``select_survivors``).

    Usage::

        strategy = NSGA2(population_size=30, num_dims=2048, num_offspring=2)
        params = strategy.default_params
        population = strategy.initial_population(key_init, params)
        state = strategy.init(key, population, evaluate(population), params)
        for generation in range(num_generations):
            offspring, state = strategy.ask(key_ask, state, params)
            # only rows with state.duplicate_of == -1 need evaluating
            state, metrics = strategy.tell(key_tell, offspring, evaluate(offspring), state, params)

    Args:
      population_size: P >= 2, parents kept.
      num_dims: D, mask length.
      num_offspring: K per generation; None means P (generational), 2 the
        authors' steady state.
    """

    def __init__(self, population_size: int, num_dims: int, num_offspring: int | None = None):
        if not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"population_size must be an integer >= 2, got {population_size!r}")
        if not isinstance(num_dims, int) or num_dims < 1:
            raise ValueError(f"num_dims must be an integer >= 1, got {num_dims!r}")
        if num_offspring is None:
            num_offspring = population_size
        if not isinstance(num_offspring, int) or num_offspring < 1:
            raise ValueError(f"num_offspring must be an integer >= 1 or None, got {num_offspring!r}")
        self.population_size = population_size
        self.num_dims = num_dims
        self.num_offspring = num_offspring

    # Equal settings, equal strategy: jit (static ``self``) reuses its compilations.
    def _key(self) -> tuple[int, int, int]:
        return (self.population_size, self.num_dims, self.num_offspring)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._key()))

    def __repr__(self) -> str:
        return (
            f"NSGA2(population_size={self.population_size}, num_dims={self.num_dims}, "
            f"num_offspring={self.num_offspring})"
        )

    @classmethod
    def from_config(cls, search_config: Any, num_dims: int) -> NSGA2:
        """The strategy a ``config.SearchConfig`` describes (its params: ``params_from_config``)."""
        return cls(search_config.population_size, num_dims, search_config.offspring_size)

    @property
    def default_params(self) -> Params:
        """The paper's settings: crossover 1.0, swap 0.5, mutation 1 / D, min_active 1."""
        return Params(crossover_rate=1.0, swap_rate=0.5, mutation_rate=1.0 / self.num_dims, min_active=1)

    @partial(jax.jit, static_argnames=("self",))
    def initial_population(self, key: jax.Array, params: Params, seeds: jax.Array | None = None) -> jax.Array:
        """(P, D) bool masks from ``init_masks`` with ``params.min_active``.

        ``seeds`` (K, D), K <= P, a warm start, replace the first K members
        (``seed_population``). Every member is then held to
        ``params.max_active`` (``repair_max_active``). Both repairs draw from
        keys folded out of ``key``, so the members ``init_masks`` draws are
        those of a run without them.
        """
        masks = init_masks(key, self.population_size, self.num_dims, params.min_active)
        if seeds is not None:
            masks = seed_population(jax.random.fold_in(key, 2), masks, seeds, params.min_active)
        return repair_max_active(jax.random.fold_in(key, 1), masks, params.max_active)

    def _check_masks(self, masks: jax.Array, rows: int, what: str) -> None:
        if masks.shape != (rows, self.num_dims):
            raise ValueError(f"{what} must have shape ({rows}, {self.num_dims}), got {masks.shape}")

    def _check_fitness(self, fitness: jax.Array, rows: int, what: str) -> None:
        if fitness.ndim != 2 or fitness.shape[0] != rows:
            raise ValueError(f"{what} must have shape ({rows}, M), got {fitness.shape}")

    @partial(jax.jit, static_argnames=("self",))
    def init(self, key: jax.Array, population: jax.Array, fitness: jax.Array, params: Params) -> State:
        """State from an evaluated initial population.

        Args:
          key: PRNG key (unused; evosax's signature).
          population: (P, D) bool (or 0/1) masks.
          fitness: (P, M) float objectives, minimised; NaN counts as +inf.
          params: Params.

        Returns:
          State.
        """
        population = jnp.asarray(population).astype(bool)
        fitness = _as_objectives(fitness)
        self._check_masks(population, self.population_size, "population")
        self._check_fitness(fitness, self.population_size, "fitness")
        rank = non_dominated_rank(fitness)
        best_solution, best_fitness = _per_objective_best(population, fitness)
        return State(
            population=population,
            fitness=fitness,
            rank=rank,
            crowding=crowding_distance(fitness, rank),
            duplicate_of=jnp.full((self.num_offspring,), -1, jnp.int32),
            best_solution=best_solution,
            best_fitness=best_fitness,
            generation_counter=jnp.int32(0),
        )

    @partial(jax.jit, static_argnames=("self",))
    def ask(self, key: jax.Array, state: State, params: Params) -> tuple[jax.Array, State]:
        """Offspring to evaluate.

        Args:
          key: PRNG key.
          state: State.
          params: Params.

        Returns:
          offspring: (K, D) bool; children 2i and 2i + 1 share a parent pair.
          state: with ``duplicate_of`` (K,) int32 for these offspring
            (``find_duplicates`` against ``state.population``).
        """
        select_key, crossover_key, mutation_key, repair_key = jax.random.split(key, 4)
        num_pairs = math.ceil(self.num_offspring / 2)
        winners = binary_tournament(select_key, state.rank, state.crowding, 2 * num_pairs)
        children_a, children_b = uniform_crossover(
            crossover_key,
            state.population[winners[:num_pairs]],
            state.population[winners[num_pairs:]],
            params.crossover_rate,
            params.swap_rate,
        )
        offspring = jnp.stack([children_a, children_b], axis=1).reshape(2 * num_pairs, self.num_dims)
        offspring = bit_flip_mutation(mutation_key, offspring[: self.num_offspring], params.mutation_rate)
        offspring = repair_min_active(repair_key, offspring, params.min_active)
        # A key folded out of the repair key: without a limit, the draws are those of before.
        offspring = repair_max_active(jax.random.fold_in(repair_key, 1), offspring, params.max_active)
        return offspring, state.replace(duplicate_of=find_duplicates(offspring, state.population))

    @partial(jax.jit, static_argnames=("self",))
    def tell(
        self, key: jax.Array, offspring: jax.Array, fitness: jax.Array, state: State, params: Params
    ) -> tuple[State, dict[str, jax.Array]]:
        """Survival of the best P of parents + offspring.

        Offspring that repeat a parent or an earlier offspring (recomputed here,
        so any (K, D) masks may be told) take the objectives already recorded for
        that mask; their rows of ``fitness`` are ignored.

        Args:
          key: PRNG key (unused: survival is deterministic).
          offspring: (K, D) bool (or 0/1) masks.
          fitness: (K, M) float objectives, minimised; NaN counts as +inf.
          state: State.
          params: Params.

        Returns:
          state: the survivors, their rank and crowding, the updated
            per-objective best, ``generation_counter`` + 1.
          metrics: dict of arrays: ``generation_counter`` (before the
            increment), ``best_fitness`` (M, M), ``best_fitness_in_generation``
            (M,) minimum of the offspring per objective, ``num_non_dominated``
            (survivors of rank 0), ``num_fronts`` (in parents + offspring),
            ``num_offspring_survived``, ``num_duplicates``.
        """
        offspring = jnp.asarray(offspring).astype(bool)
        fitness = _as_objectives(fitness).astype(state.fitness.dtype)
        self._check_masks(offspring, self.num_offspring, "offspring")
        self._check_fitness(fitness, self.num_offspring, "fitness")
        duplicate_of = find_duplicates(offspring, state.population)
        fitness = fill_duplicate_fitness(fitness, duplicate_of, state.fitness)

        # Per-objective best so far (evosax's archive, one entry per objective);
        # the incumbents come first, so they keep exact ties.
        best_solution, best_fitness = _per_objective_best(
            jnp.concatenate([state.best_solution, offspring]), jnp.concatenate([state.best_fitness, fitness])
        )

        union = jnp.concatenate([state.population, offspring])
        union_fitness = jnp.concatenate([state.fitness, fitness])
        survivors, rank, crowding = select_survivors(union_fitness, self.population_size)
        new_state = state.replace(
            population=union[survivors],
            fitness=union_fitness[survivors],
            rank=rank[survivors],
            crowding=crowding[survivors],
            duplicate_of=duplicate_of,
            best_solution=best_solution,
            best_fitness=best_fitness,
            generation_counter=state.generation_counter + 1,
        )
        metrics = {
            "generation_counter": state.generation_counter,
            "best_fitness": best_fitness,
            "best_fitness_in_generation": jnp.min(fitness, axis=0),
            "num_non_dominated": jnp.sum(new_state.rank == 0),
            "num_fronts": jnp.max(rank) + 1,
            "num_offspring_survived": jnp.sum(survivors >= self.population_size),
            "num_duplicates": jnp.sum(duplicate_of >= 0),
        }
        return new_state, metrics
