"""Variation and bookkeeping operators on (N, D) bool feature masks.

The operators of MO-EvoPruneDeepTL's NSGA-II (Poyatos et al., arXiv 2302.10253;
docs/PROTOCOL.md "NSGA-II"), kept apart from the strategy as pymoo keeps its
operators:

* initialisation: ``init_masks`` (the authors' initialisation),
  ``seed_population`` (a warm start);
* repair: ``repair_min_active``, ``repair_max_active``;
* selection: ``binary_tournament`` on (rank, crowding) (Deb, Pratap, Agarwal and
  Meyarivan, "A fast and elitist multiobjective genetic algorithm: NSGA-II",
  IEEE TEC 6(2), 2002);
* variation: ``uniform_crossover`` (jMetal's / pymoo's ``UniformCrossover``),
  ``bit_flip_mutation``;
* duplicates: ``find_duplicates``, ``fill_duplicate_fitness``;
* ``masks_from_genomes``: the bridge for a single-objective run (the
  predecessor EvoPruneDeepTL) with any evosax population-based algorithm on
  continuous genomes.

Contract: masks are (N, D) bool arrays (0/1 accepted where stated), one row
per individual; every random operator takes an explicit PRNG key and draws
each row independently; no operator evaluates a mask or knows the objectives
beyond the ranks, crowding distances and fitness rows it is given.

No Python loop over individuals: everything is array code that runs under
``jax.jit``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax


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
