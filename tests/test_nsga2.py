"""The NSGA-II strategy (search/nsga2.py) end to end: init / ask / tell, params, evosax."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune.config import SearchConfig
from evojax_prune.search import nsga2, operators, ranking

pymoo_nds = pytest.importorskip("pymoo.util.nds.non_dominated_sorting")


def pymoo_rank(fitness: np.ndarray) -> np.ndarray:
    _, rank = pymoo_nds.NonDominatedSorting().do(np.asarray(fitness, np.float64), return_rank=True)
    return rank



NUM_BITS = 12
WEIGHTS = np.random.default_rng(3).integers(1, 10, (2, NUM_BITS)).astype(np.float32)


@jax.jit
def knapsack_objectives(masks):
    """A bi-objective problem on 12 bits: weight kept vs value left out."""
    x = jnp.asarray(masks).astype(jnp.float32)
    return jnp.stack([x @ WEIGHTS[0], (1.0 - x) @ WEIGHTS[1]], axis=1)


def brute_force_front() -> set[tuple[float, ...]]:
    every_mask = (np.arange(2**NUM_BITS)[:, None] >> np.arange(NUM_BITS)) & 1
    fitness = np.asarray(knapsack_objectives(every_mask.astype(bool)))
    return {tuple(point) for point in fitness[pymoo_rank(fitness) == 0]}


def run_loop(strategy, params, key, generations):
    """A run as a search loop drives it: jitted init / ask / tell called from Python."""
    init_key, state_key, run_key = jax.random.split(key, 3)
    population = strategy.initial_population(init_key, params)
    state = strategy.init(state_key, population, knapsack_objectives(population), params)
    history = []
    for generation_key in jax.random.split(run_key, generations):
        ask_key, tell_key = jax.random.split(generation_key)
        offspring, state = strategy.ask(ask_key, state, params)
        state, metrics = strategy.tell(tell_key, offspring, knapsack_objectives(offspring), state, params)
        history.append(metrics)
    history = jax.device_get(history)
    return state, {name: np.stack([metrics[name] for metrics in history]) for name in history[0]}


@partial(jax.jit, static_argnames=("strategy", "generations"))
def run_scanned(strategy, params, key, generations):
    """The same run under one outer jit: ask / tell inside a lax.scan."""
    init_key, state_key, run_key = jax.random.split(key, 3)
    population = strategy.initial_population(init_key, params)
    state = strategy.init(state_key, population, knapsack_objectives(population), params)

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        offspring, state = strategy.ask(ask_key, state, params)
        return strategy.tell(tell_key, offspring, knapsack_objectives(offspring), state, params)

    return jax.lax.scan(generation, state, jax.random.split(run_key, generations))


def front_of(state) -> set[tuple[float, ...]]:
    fitness, rank = np.asarray(state.fitness), np.asarray(state.rank)
    return {tuple(point) for point in fitness[rank == 0]}


# One strategy shape for most tests below, so that init / ask / tell compile once.
GENERATIONAL = nsga2.NSGA2(40, NUM_BITS)
# The empty mask is on the true front, so these runs allow it.
GENERATIONAL_PARAMS = GENERATIONAL.default_params.replace(min_active=0)
DISTINCT_MASKS = ((np.arange(1, 81)[:, None] >> np.arange(NUM_BITS)) & 1).astype(bool)  # 80 masks


def test_nsga2_finds_the_brute_force_front():
    true_front = brute_force_front()
    assert 10 <= len(true_front) <= 30
    state, metrics = run_loop(GENERATIONAL, GENERATIONAL_PARAMS, jax.random.PRNGKey(0), 60)
    assert front_of(state) == true_front
    np.testing.assert_array_equal(
        np.asarray(state.rank), np.asarray(ranking.non_dominated_rank(state.fitness))
    )
    np.testing.assert_array_equal(
        np.asarray(knapsack_objectives(state.population)), np.asarray(state.fitness)
    )
    # The per-objective best: the two extremes of the true front, with their masks.
    np.testing.assert_array_equal(np.diagonal(np.asarray(state.best_fitness)), [0.0, 0.0])
    assert {tuple(row) for row in np.asarray(state.best_fitness)} <= true_front
    np.testing.assert_array_equal(
        np.asarray(knapsack_objectives(state.best_solution)), np.asarray(state.best_fitness)
    )
    assert int(state.generation_counter) == 60
    np.testing.assert_array_equal(np.asarray(metrics["generation_counter"]), np.arange(60))
    assert np.asarray(metrics["num_duplicates"]).sum() > 0  # a converging population repeats itself
    assert int(metrics["num_non_dominated"][-1]) == int((np.asarray(state.rank) == 0).sum())


def test_nsga2_steady_state_under_one_jit_as_the_authors_ran_it():
    strategy = nsga2.NSGA2(30, NUM_BITS, num_offspring=2)
    params = strategy.default_params.replace(min_active=0)
    state, metrics = run_scanned(strategy, params, jax.random.PRNGKey(1), 1000)
    assert state.population.shape == (30, NUM_BITS) and state.duplicate_of.shape == (2,)
    found, true_front = front_of(state), brute_force_front()
    assert found <= true_front and len(found) >= len(true_front) - 1
    assert np.all(np.asarray(metrics["num_offspring_survived"]) <= 2)
    assert int(state.generation_counter) == 1000


def test_nsga2_is_reproducible():
    first, _ = run_loop(GENERATIONAL, GENERATIONAL_PARAMS, jax.random.PRNGKey(5), 5)
    # A new but equal strategy: equal hash, so the same compilation and the same result.
    again, _ = run_loop(nsga2.NSGA2(40, NUM_BITS), GENERATIONAL_PARAMS, jax.random.PRNGKey(5), 5)
    other, _ = run_loop(GENERATIONAL, GENERATIONAL_PARAMS, jax.random.PRNGKey(6), 5)
    for leaf_a, leaf_b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))
    assert not np.array_equal(np.asarray(first.population), np.asarray(other.population))
    assert nsga2.NSGA2(40, NUM_BITS) == GENERATIONAL and hash(nsga2.NSGA2(40, NUM_BITS)) == hash(GENERATIONAL)
    assert nsga2.NSGA2(40, NUM_BITS, 2) != GENERATIONAL


def test_ask_and_tell_shapes_and_duplicate_reuse():
    params = GENERATIONAL.default_params.replace(mutation_rate=0.0, crossover_rate=0.0)
    initial = GENERATIONAL.initial_population(jax.random.PRNGKey(0), params.replace(min_active=9))
    assert initial.shape == (40, NUM_BITS) and int(initial.sum(axis=1).min()) >= 9  # params.min_active
    population = DISTINCT_MASKS[:40]
    fitness = np.stack([np.arange(40.0), -np.arange(40.0)], axis=1).astype(np.float32)  # one front
    state = GENERATIONAL.init(jax.random.PRNGKey(0), population, fitness, params)
    np.testing.assert_array_equal(np.asarray(state.duplicate_of), [-1] * 40)
    # Without crossover and mutation every child copies a parent.
    offspring, state = GENERATIONAL.ask(jax.random.PRNGKey(1), state, params)
    assert offspring.shape == (40, NUM_BITS) and offspring.dtype == jnp.bool_
    duplicate_of = np.asarray(state.duplicate_of)
    assert np.all((duplicate_of >= 0) & (duplicate_of < 40))
    np.testing.assert_array_equal(np.asarray(offspring), np.asarray(population)[duplicate_of])
    # tell ignores the (NaN) fitness told for repeats and uses the recorded one.
    told = np.full((40, 2), np.nan, np.float32)
    state, metrics = GENERATIONAL.tell(jax.random.PRNGKey(2), offspring, told, state, params)
    assert int(metrics["num_duplicates"]) == 40
    parent_of = {tuple(row): i for i, row in enumerate(np.asarray(population))}
    expected = np.array([fitness[parent_of[tuple(row)]] for row in np.asarray(state.population)])
    np.testing.assert_array_equal(np.asarray(state.fitness), expected)


def test_tell_maps_nan_to_inf_and_drops_it():
    params = GENERATIONAL.default_params
    parents_fitness = np.ones((40, 2), np.float32)
    state = GENERATIONAL.init(jax.random.PRNGKey(0), DISTINCT_MASKS[:40], parents_fitness, params)
    fitness = np.full((40, 2), 2.0, np.float32)  # offspring dominated by every parent ...
    fitness[:4] = [[np.nan, 2.0], [0.5, 0.5], [np.nan, np.nan], [0.75, 0.875]]
    state, metrics = GENERATIONAL.tell(jax.random.PRNGKey(1), DISTINCT_MASKS[40:], fitness, state, params)
    kept = np.asarray(state.fitness)
    # ... but two: fronts (0.5, 0.5); (0.75, 0.875); the parents' (1, 1); (2, 2); NaN as +inf last.
    np.testing.assert_array_equal(kept[:2], [[0.5, 0.5], [0.75, 0.875]])
    np.testing.assert_array_equal(kept[2:], np.ones((38, 2)))
    np.testing.assert_array_equal(np.asarray(state.rank), [0, 1] + [2] * 38)
    assert int(metrics["num_offspring_survived"]) == 2 and int(metrics["num_fronts"]) == 6
    np.testing.assert_array_equal(np.asarray(metrics["best_fitness_in_generation"]), [0.5, 0.5])


def test_strategy_validates_shapes():
    strategy = nsga2.NSGA2(4, 6)
    params = strategy.default_params
    with pytest.raises(ValueError, match=r"population must have shape \(4, 6\)"):
        strategy.init(jax.random.PRNGKey(0), np.zeros((4, 5), bool), np.zeros((4, 2)), params)
    with pytest.raises(ValueError, match="fitness"):
        strategy.init(jax.random.PRNGKey(0), np.zeros((4, 6), bool), np.zeros((3, 2)), params)
    with pytest.raises(ValueError, match="population_size"):
        nsga2.NSGA2(1, 6)
    with pytest.raises(ValueError, match="num_offspring"):
        nsga2.NSGA2(4, 6, 0)


def test_params_from_config_and_defaults():
    strategy = nsga2.NSGA2(30, 2048, num_offspring=2)
    assert strategy.default_params == nsga2.Params(
        crossover_rate=1.0, swap_rate=0.5, mutation_rate=1 / 2048, min_active=1
    )
    config = SearchConfig(population_size=30, offspring_size=2)
    assert nsga2.params_from_config(config, 2048) == strategy.default_params
    assert nsga2.NSGA2.from_config(config, 2048) == strategy
    custom = dataclasses.replace(config, mutation_rate=0.01, crossover_rate=0.9, swap_rate=0.3, min_active=0)
    assert nsga2.params_from_config(custom, 2048) == nsga2.Params(0.9, 0.3, 0.01, 0)
    generational = nsga2.NSGA2.from_config(SearchConfig(population_size=16), 10)
    assert generational.num_offspring == 16


def test_simple_ga_through_masks_from_genomes_improves_a_single_objective():
    """A single-objective run (EvoPruneDeepTL) with evosax's own SimpleGA."""
    import optax
    from evosax.algorithms import SimpleGA

    num_dims, population_size = 32, 32
    target = jax.random.bernoulli(jax.random.PRNGKey(42), 0.5, (num_dims,))

    def error(genomes):  # bits wrong, minimised
        return jnp.sum(operators.masks_from_genomes(genomes) != target, axis=1).astype(jnp.float32)

    algorithm = SimpleGA(population_size, jnp.zeros(num_dims), std_schedule=optax.constant_schedule(0.1))
    params = algorithm.default_params
    population_key, init_key, run_key = jax.random.split(jax.random.PRNGKey(0), 3)
    genomes = jax.random.uniform(population_key, (population_size, num_dims))
    state = algorithm.init(init_key, genomes, error(genomes), params)
    initial_best = float(state.best_fitness)

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        genomes, state = algorithm.ask(ask_key, state, params)
        state, _ = algorithm.tell(tell_key, genomes, error(genomes), state, params)
        return state, None

    state, _ = jax.lax.scan(generation, state, jax.random.split(run_key, 60))
    assert float(state.best_fitness) <= initial_best - 4
    assert float(error(state.best_solution[None])[0]) == float(state.best_fitness)
