"""NSGA-II over binary feature masks, with evosax's interface.

The search of MO-EvoPruneDeepTL (Poyatos et al., arXiv 2302.10253; docs/PROTOCOL.md
"NSGA-II"): non-dominated sorting and crowding distance (Deb, Pratap, Agarwal and
Meyarivan, "A fast and elitist multiobjective genetic algorithm: NSGA-II", IEEE
TEC 6(2), 2002), binary tournament on (rank, crowding), uniform crossover,
bit-flip mutation and the authors' initialisation. Every objective is minimised.

This module is the strategy ``NSGA2`` with evosax's ``init / ask / tell``
(jit-compiled, static ``self``, explicit keys, ``flax.struct`` state and
params), as evosax keeps one algorithm per file. Its parts live apart, each
usable on its own:

* ``search.ranking``: ``non_dominated_rank``, ``crowding_distance``,
  ``select_survivors`` (pymoo's ``RankAndCrowding`` with deterministic ties);
* ``search.operators``: operators on (N, D) bool masks, ``init_masks``,
  ``binary_tournament``, ``uniform_crossover``, ``bit_flip_mutation``,
  ``repair_min_active``, ``find_duplicates``, ``fill_duplicate_fitness``.

A single-objective run (the predecessor EvoPruneDeepTL) can use any evosax
population-based algorithm on continuous genomes and
``operators.masks_from_genomes``.

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

from evojax_prune.search.operators import (
    binary_tournament,
    bit_flip_mutation,
    fill_duplicate_fitness,
    find_duplicates,
    init_masks,
    repair_max_active,
    repair_min_active,
    seed_population,
    uniform_crossover,
)
from evojax_prune.search.ranking import as_objectives, crowding_distance, non_dominated_rank, select_survivors


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
        fitness = as_objectives(fitness)
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
        fitness = as_objectives(fitness).astype(state.fitness.dtype)
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
