"""NSGA-II: ranking and crowding against pymoo, operators, the strategy end to end."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune.config import SearchConfig
from evojax_prune.search import nsga2

pymoo_nds = pytest.importorskip("pymoo.util.nds.non_dominated_sorting")
pymoo_metrics = pytest.importorskip("pymoo.operators.survival.rank_and_crowding.metrics")


def pymoo_rank(fitness: np.ndarray) -> np.ndarray:
    _, rank = pymoo_nds.NonDominatedSorting().do(np.asarray(fitness, np.float64), return_rank=True)
    return rank


def pymoo_crowding(fitness: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Crowding per front exactly as RankAndCrowding computes it."""
    crowding_function = pymoo_metrics.get_crowding_function("cd")
    fitness = np.asarray(fitness, np.float64)
    distance = np.empty(len(fitness))
    for front_index in np.unique(rank):
        front = np.where(rank == front_index)[0]
        distance[front] = crowding_function.do(fitness[front])
    return distance


def assert_crowding_equal(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(reference))
    finite = np.isfinite(reference)
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-5, atol=1e-6)


def random_objectives(seed: int, num_points: int, num_objectives: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "ties":  # small integer range: many equal values and repeated points
        return rng.integers(0, 5, (num_points, num_objectives)).astype(np.float32)
    if kind == "constant_column":  # one objective with zero range everywhere
        fitness = rng.integers(0, 9, (num_points, num_objectives)).astype(np.float32)
        fitness[:, -1] = 3.0
        return fitness
    return rng.random((num_points, num_objectives)).astype(np.float32)


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------

# (N, M, methods): every method on shapes from one point to several tiles; each
# shape is checked on tied, continuous and constant-column data (one compilation).
RANK_CASES = [
    (1, 2, ("sweep", "chain", "peel")),
    (3, 3, ("chain", "peel")),
    (17, 3, ("chain", "peel")),
    (300, 2, ("sweep", "chain")),
    (300, 3, ("chain", "peel")),
    (1100, 2, ("sweep",)),
    (1100, 3, ("chain",)),
    (200, 1, ("chain", "peel")),
    (200, 4, ("chain", "peel")),
]


@pytest.mark.parametrize(("num_points", "num_objectives", "methods"), RANK_CASES)
def test_rank_matches_pymoo(num_points, num_objectives, methods):
    kinds = ("ties", "continuous") + (("constant_column",) if num_objectives > 1 else ())
    for kind in kinds:
        fitness = random_objectives(num_points * 31 + num_objectives, num_points, num_objectives, kind)
        expected = pymoo_rank(fitness)
        for method in methods:
            rank = nsga2.non_dominated_rank(jnp.asarray(fitness), method=method)
            assert rank.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(rank), expected, err_msg=f"{method}, {kind}")


def test_rank_auto_picks_a_method_by_shape():
    for num_points, num_objectives in [(300, 2), (3, 3), (1100, 3)]:  # sweep, peel, chain
        fitness = random_objectives(num_points, num_points, num_objectives, "ties")
        np.testing.assert_array_equal(np.asarray(nsga2.non_dominated_rank(fitness)), pymoo_rank(fitness))


def test_rank_small_tiles_cover_every_block_path():
    # Small blocks (many of them), tiles overlapping the block, the last tiles clamped.
    fitness = random_objectives(5, 333, 3, "ties")
    for block, chunk in [(8, 100)]:
        rank = nsga2.non_dominated_rank(jnp.asarray(fitness), method="chain", block=block, chunk=chunk)
        np.testing.assert_array_equal(np.asarray(rank), pymoo_rank(fitness), err_msg=f"{block}/{chunk}")


def test_rank_basic_facts():
    fitness = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0], [3.0, 3.0], [-0.0, 2.0], [0.0, 2.0]])
    # Identical points (also -0.0 and 0.0) share a rank; a dominated point is one further.
    np.testing.assert_array_equal(np.asarray(nsga2.non_dominated_rank(fitness)), [0, 0, 0, 1, 2, 0, 0])
    dominates = np.asarray(nsga2.dominance_matrix(fitness))
    assert dominates[0, 3] and not dominates[3, 0] and not dominates[0, 1] and not dominates[0, 2]


@pytest.mark.parametrize(("num_objectives", "methods"), [(2, ("sweep", "chain")), (3, ("chain", "peel"))])
def test_rank_nan_counts_as_inf(num_objectives, methods):
    fitness = random_objectives(3, 300, num_objectives, "ties")
    fitness[::7, 1] = np.nan
    fitness[::11, 0] = np.inf
    fitness[::13, :] = np.inf
    # moocore (behind pymoo) mis-ranks +inf; a large finite value orders the same.
    expected = pymoo_rank(np.where(np.isfinite(fitness), fitness, 1e9))
    for method in methods:
        np.testing.assert_array_equal(
            np.asarray(nsga2.non_dominated_rank(jnp.asarray(fitness), method=method)), expected
        )
    # A repeated point must not pass for a dominator of an infinite one.
    if num_objectives == 3:
        fitness = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, np.inf, np.nan]])
        for method in methods:
            assert nsga2.non_dominated_rank(fitness, method=method).tolist() == [0, 0, 1]


def test_rank_rejects_bad_input():
    with pytest.raises(ValueError, match="sweep"):
        nsga2.non_dominated_rank(jnp.zeros((4, 3)), method="sweep")
    with pytest.raises(ValueError, match="method"):
        nsga2.non_dominated_rank(jnp.zeros((4, 3)), method="fast")
    with pytest.raises(ValueError, match=r"\(N, M\)"):
        nsga2.non_dominated_rank(jnp.zeros((4,)))


def test_rank_at_twenty_thousand_points():
    fitness = random_objectives(11, 20_000, 3, "continuous")
    rank = nsga2.non_dominated_rank(jnp.asarray(fitness))
    np.testing.assert_array_equal(np.asarray(rank), pymoo_rank(fitness))


# ---------------------------------------------------------------------------
# Crowding and survival
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("num_points", "num_objectives"), [(2, 2), (5, 3), (40, 2), (300, 3), (1000, 3)])
def test_crowding_matches_pymoo(num_points, num_objectives):
    for kind in ("ties", "continuous", "constant_column"):
        fitness = random_objectives(num_points + 7 * num_objectives, num_points, num_objectives, kind)
        rank = pymoo_rank(fitness)
        ours = nsga2.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank))
        assert_crowding_equal(ours, pymoo_crowding(fitness, rank))


def test_crowding_duplicates_follow_stable_order():
    # Three copies of one point between two extremes: pymoo's stable sort gives the
    # first copy a gap to its left, the last one a gap to its right, the middle 0.
    fitness = np.array([[0.0, 4.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [4.0, 0.0]], np.float32)
    rank = np.zeros(5, np.int32)
    ours = np.asarray(nsga2.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank)))
    assert_crowding_equal(ours, pymoo_crowding(fitness, rank))
    np.testing.assert_allclose(ours[1:4], [0.5, 0.0, 0.5])


def test_crowding_with_infinite_objectives_matches_pymoo():
    fitness = random_objectives(9, 80, 3, "ties")
    fitness[::9, 2] = np.inf
    rank = pymoo_rank(fitness)
    with np.errstate(invalid="ignore"):
        reference = pymoo_crowding(fitness, rank)
    assert_crowding_equal(nsga2.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank)), reference)


@pytest.mark.parametrize(("num_points", "num_objectives", "seed"), [(100, 2, 0), (401, 3, 1)])
def test_select_survivors_matches_pymoo_rank_and_crowding(num_points, num_objectives, seed):
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    fitness = random_objectives(seed, num_points, num_objectives, "continuous")  # no ties at the cut
    num_survivors = num_points // 2
    survivors, rank, crowding = nsga2.select_survivors(jnp.asarray(fitness), num_survivors)
    survivors = np.asarray(survivors)
    assert survivors.shape == (num_survivors,) and len(set(survivors.tolist())) == num_survivors
    kept = RankAndCrowding().do(
        Problem(n_var=1, n_obj=num_objectives),
        Population.new("F", fitness.astype(np.float64)),
        n_survive=num_survivors,
        random_state=np.random.default_rng(0),
    )
    np.testing.assert_array_equal(np.sort(np.asarray(rank)[survivors]), np.sort(kept.get("rank").astype(int)))
    np.testing.assert_allclose(
        np.sort(np.asarray(crowding)[survivors]), np.sort(kept.get("crowding")), rtol=1e-5, atol=1e-6
    )
    # Same individuals, since no two points tie at the cut.
    np.testing.assert_allclose(
        np.sort(fitness[survivors], axis=0), np.sort(kept.get("F"), axis=0), rtol=1e-6
    )


def test_select_survivors_breaks_ties_by_index():
    # One front: two extremes and four copies of a middle point. The first and last
    # copy get crowding 0.5 (pymoo's stable order), the two between get 0; equal
    # (rank, crowding) goes to the lower index, deterministically.
    fitness = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [3.0, 3.0]])
    survivors, rank, crowding = nsga2.select_survivors(fitness, 5)
    assert np.asarray(survivors).tolist() == [0, 1, 2, 5, 3]
    assert np.asarray(rank).tolist() == [0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(np.asarray(crowding)[2:6], [0.5, 0.0, 0.0, 0.5])


# ---------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------


def test_init_masks_has_exactly_round_p_times_d_ones():
    key = jax.random.PRNGKey(3)
    population_size, num_dims = 500, 37
    masks = np.asarray(nsga2.init_masks(key, population_size, num_dims))
    assert masks.shape == (population_size, num_dims) and masks.dtype == bool
    draw_fraction = jax.jit(lambda key: jax.random.uniform(jax.random.split(key, 3)[0], (population_size,)))
    fraction = np.asarray(draw_fraction(key))
    np.testing.assert_array_equal(masks.sum(axis=1), np.round(fraction * num_dims))
    # The counts are spread over 0..D (p uniform) and every position is used alike.
    counts = masks.sum(axis=1)
    assert counts.min() <= 2 and counts.max() >= num_dims - 2
    assert np.all(np.abs(masks.mean(axis=0) - 0.5) < 0.12)
    # min_active: masks below it are topped up, the others unchanged.
    repaired = np.asarray(nsga2.init_masks(key, population_size, num_dims, 10))
    np.testing.assert_array_equal(repaired.sum(axis=1), np.maximum(counts, 10))
    np.testing.assert_array_equal(repaired[counts >= 10], masks[counts >= 10])


def test_repair_min_active():
    rng = np.random.default_rng(0)
    masks = rng.random((400, 20)) < 0.1
    masks[0] = False
    masks[1] = True
    repaired = np.asarray(nsga2.repair_min_active(jax.random.PRNGKey(1), jnp.asarray(masks), 5))
    counts = masks.sum(axis=1)
    np.testing.assert_array_equal(repaired.sum(axis=1), np.maximum(counts, 5))
    assert np.all(repaired[masks])  # existing ones are kept
    np.testing.assert_array_equal(repaired[counts >= 5], masks[counts >= 5])
    # New ones land on every position (uniformly at random, not the first zeros).
    added = (repaired & ~masks).mean(axis=0)
    assert added.min() > 0.05
    # No repair at 0; above D: all ones.
    np.testing.assert_array_equal(np.asarray(nsga2.repair_min_active(jax.random.PRNGKey(1), masks, 0)), masks)
    assert np.asarray(nsga2.repair_min_active(jax.random.PRNGKey(1), masks, 99)).all()


@pytest.mark.parametrize("rate", [0.0, 1.0 / 64, 0.2, 1.0])
def test_bit_flip_mutation_rate(rate):
    masks = np.random.default_rng(0).random((2000, 64)) < 0.3
    mutated = nsga2.bit_flip_mutation(jax.random.PRNGKey(1), masks, rate)
    flipped = np.asarray(mutated) != masks
    n = flipped.size
    assert abs(flipped.mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / n) + 1e-12
    # Flips are independent of the bit's value.
    if 0 < rate < 1:
        assert abs(flipped[masks].mean() - flipped[~masks].mean()) < 0.01


def test_uniform_crossover_keeps_parent_genes():
    key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    parents_a, parents_b = rng.random((1000, 50)) < 0.5, rng.random((1000, 50)) < 0.5
    child_a, child_b = nsga2.uniform_crossover(key, parents_a, parents_b, 1.0, 0.5)
    a, b, ca, cb = map(np.asarray, (parents_a, parents_b, child_a, child_b))
    assert np.all((ca == a) | (ca == b)) and np.all((cb == a) | (cb == b))
    np.testing.assert_array_equal(ca.astype(int) + cb, a.astype(int) + b)  # genes are swapped, not made
    differ = a != b
    assert abs((ca[differ] == b[differ]).mean() - 0.5) < 0.02
    # No recombination: copies. Crossover rate: the fraction of recombined pairs.
    child_a, child_b = nsga2.uniform_crossover(key, parents_a, parents_b, 0.0, 0.5)
    np.testing.assert_array_equal(np.asarray(child_a), a)
    np.testing.assert_array_equal(np.asarray(child_b), b)
    child_a, _ = nsga2.uniform_crossover(key, parents_a, parents_b, 0.3, 1.0)
    recombined = np.any(np.asarray(child_a) != a, axis=1)
    assert abs(recombined.mean() - 0.3) < 0.06


def test_binary_tournament_prefers_rank_then_crowding():
    # Two distinct members per tournament, so with P = 10 member i wins with
    # probability 2 * (number of members it beats) / (P * (P - 1)).
    key, size, tournaments = jax.random.PRNGKey(0), 10, 20_000
    beats_none_to_all = np.arange(size)  # member i beats the i members before it in this order

    def win_rates(rank, crowding):
        winners = np.asarray(nsga2.binary_tournament(key, rank, crowding, tournaments))
        return np.bincount(winners, minlength=size) / tournaments

    expected = 2 * beats_none_to_all / (size * (size - 1))
    # Lower rank wins, whatever the crowding.
    rates = win_rates(np.arange(size)[::-1].copy(), np.arange(size, dtype=np.float32))
    assert rates[0] == 0 and np.all(np.abs(rates - expected) < 0.012)
    # Equal rank: larger crowding wins (infinite included).
    crowding = np.arange(size, dtype=np.float32)
    crowding[-1] = np.inf
    rates = win_rates(np.zeros(size, np.int32), crowding)
    assert rates[0] == 0 and np.all(np.abs(rates - expected) < 0.012)
    # Full tie: a fair coin, every member alike.
    rates = win_rates(np.zeros(size, np.int32), np.zeros(size, np.float32))
    assert np.all(np.abs(rates - 1 / size) < 0.012)


def test_find_duplicates_and_fill_fitness():
    parents = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    offspring = np.array(
        [[0, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0]],
        bool,
    )
    duplicate_of = np.asarray(nsga2.find_duplicates(offspring, parents))
    # new, parent 2, offspring 0, parent 1, new, offspring 0, offspring 4
    np.testing.assert_array_equal(duplicate_of, [-1, 2, 3, 1, -1, 3, 7])
    parent_fitness = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.float32)
    unknown = [np.nan, np.nan]
    fitness = np.array([[9.0, 0.0], unknown, unknown, unknown, [5.0, 4.0], unknown, unknown], np.float32)
    filled = np.asarray(nsga2.fill_duplicate_fitness(fitness, duplicate_of, parent_fitness))
    np.testing.assert_array_equal(
        filled, [[9, 0], [3, 3], [9, 0], [2, 2], [5, 4], [9, 0], [5, 4]]
    )


def test_find_duplicates_at_paper_size():
    parents = np.random.default_rng(0).random((30, 2048)) < 0.5
    offspring = parents[[4, 7]].copy()
    offspring[1, 5] = ~offspring[1, 5]
    np.testing.assert_array_equal(np.asarray(nsga2.find_duplicates(offspring, parents)), [4, -1])


def test_masks_from_genomes():
    genomes = np.array([[0.2, 0.5, 0.51, 1.3]])
    np.testing.assert_array_equal(np.asarray(nsga2.masks_from_genomes(genomes)), [[False, False, True, True]])
    np.testing.assert_array_equal(np.asarray(nsga2.masks_from_genomes(genomes, 0.0)), [[True] * 4])


# ---------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------

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
    np.testing.assert_array_equal(np.asarray(state.rank), np.asarray(nsga2.non_dominated_rank(state.fitness)))
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
        return jnp.sum(nsga2.masks_from_genomes(genomes) != target, axis=1).astype(jnp.float32)

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
