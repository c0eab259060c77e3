"""Non-dominated ranking, crowding distance and NSGA-II survival.

The selection of NSGA-II (Deb, Pratap, Agarwal and Meyarivan, "A fast and
elitist multiobjective genetic algorithm: NSGA-II", IEEE TEC 6(2), 2002), as
MO-EvoPruneDeepTL uses it (Poyatos et al., arXiv 2302.10253; docs/PROTOCOL.md
"NSGA-II"):

* ``non_dominated_rank``: the front index of every point, by one of
  ``RANK_METHODS`` (all give the same ranks; ``dominance_matrix`` for "peel");
* ``crowding_distance``: within each front, pymoo's ``calc_crowding_distance``;
* ``select_survivors``: the best k by rank, then larger crowding (pymoo's
  ``RankAndCrowding`` with deterministic ties);
* ``as_objectives``: the objectives as every function here reads them.

Contract: objectives are an (N, M) float array and every objective is
minimised; NaN counts as +inf and -0.0 as +0.0. Ranks are (N,) int32, equal to
pymoo's ``NonDominatedSorting`` on finite objectives; crowding distances and
survivors are pymoo's, ties broken by the lower index. Nothing here knows about
masks or the strategy.

No Python loop over points or fronts: everything is array code that runs under
``jax.jit``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

RANK_METHODS = ("auto", "sweep", "chain", "peel")


def as_objectives(fitness: jax.Array) -> jax.Array:
    """(N, M) floating objectives with NaN mapped to +inf and -0.0 to +0.0.

    The form in which every function of this module reads objectives, and in
    which ``NSGA2`` stores them; the dtype is ``result_type(dtype, float32)``
    (float32 for bools, integers and narrower floats).

    Args:
      fitness: (N, M) objectives, minimised.

    Returns:
      (N, M) float array.

    Raises:
      ValueError: when ``fitness`` is not two-dimensional.
    """
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
      bytes; no (N, N, M) intermediate is formed.
    """
    fitness = as_objectives(fitness)
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
    # The best of those compared on a CPU from N = 2,000 to 20,000 (M = 3; docs/benchmarks.md).
    block = 64 if block is None else block
    chunk = 512 if chunk is None else chunk
    padded = _round_up(num_points, block)
    # A tile as long as the whole array is several times slower on XLA:CPU (docs/benchmarks.md),
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
          array, so N is limited by time only (timings: docs/benchmarks.md).
        ``"peel"`` (any M): the dominance matrix (``dominance_matrix``), fronts
          peeled in a ``lax.while_loop`` by counting remaining dominators; one pass
          over the matrix per front. Memory N^2 bytes + O(N). Fully parallel (a
          candidate for accelerators; not benchmarked there), slow on CPU.
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
    fitness = as_objectives(fitness)
    if fitness.shape[0] == 0:
        return jnp.zeros((0,), jnp.int32)
    if method == "sweep":
        return _rank_by_sweep(fitness)
    if method == "peel":
        return _rank_by_peeling(fitness)
    return _rank_by_chain(fitness, block, chunk)



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
    fitness = as_objectives(fitness)
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
    fitness = as_objectives(fitness)
    num_points = fitness.shape[0]
    if not 0 <= num_survivors <= num_points:
        raise ValueError(f"num_survivors must be in [0, {num_points}], got {num_survivors}")
    rank = non_dominated_rank(fitness)
    crowding = crowding_distance(fitness, rank)
    index = jnp.arange(num_points, dtype=jnp.int32)
    order = lax.sort((rank, -crowding, index), num_keys=3, is_stable=True)[-1]
    return order[:num_survivors], rank, crowding
