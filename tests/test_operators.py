"""Operators on (N, D) bool masks (search/operators.py): initialisation, repair, tournament,
crossover, mutation, duplicates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune.search import operators


def test_init_masks_has_exactly_round_p_times_d_ones():
    key = jax.random.PRNGKey(3)
    population_size, num_dims = 500, 37
    masks = np.asarray(operators.init_masks(key, population_size, num_dims))
    assert masks.shape == (population_size, num_dims) and masks.dtype == bool
    draw_fraction = jax.jit(lambda key: jax.random.uniform(jax.random.split(key, 3)[0], (population_size,)))
    fraction = np.asarray(draw_fraction(key))
    np.testing.assert_array_equal(masks.sum(axis=1), np.round(fraction * num_dims))
    # The counts are spread over 0..D (p uniform) and every position is used alike.
    counts = masks.sum(axis=1)
    assert counts.min() <= 2 and counts.max() >= num_dims - 2
    assert np.all(np.abs(masks.mean(axis=0) - 0.5) < 0.12)
    # min_active: masks below it are topped up, the others unchanged.
    repaired = np.asarray(operators.init_masks(key, population_size, num_dims, 10))
    np.testing.assert_array_equal(repaired.sum(axis=1), np.maximum(counts, 10))
    np.testing.assert_array_equal(repaired[counts >= 10], masks[counts >= 10])


def test_repair_min_active():
    rng = np.random.default_rng(0)
    masks = rng.random((400, 20)) < 0.1
    masks[0] = False
    masks[1] = True
    repaired = np.asarray(operators.repair_min_active(jax.random.PRNGKey(1), jnp.asarray(masks), 5))
    counts = masks.sum(axis=1)
    np.testing.assert_array_equal(repaired.sum(axis=1), np.maximum(counts, 5))
    assert np.all(repaired[masks])  # existing ones are kept
    np.testing.assert_array_equal(repaired[counts >= 5], masks[counts >= 5])
    # New ones land on every position (uniformly at random, not the first zeros).
    added = (repaired & ~masks).mean(axis=0)
    assert added.min() > 0.05
    # No repair at 0; above D: all ones.
    np.testing.assert_array_equal(
        np.asarray(operators.repair_min_active(jax.random.PRNGKey(1), masks, 0)), masks
    )
    assert np.asarray(operators.repair_min_active(jax.random.PRNGKey(1), masks, 99)).all()


@pytest.mark.parametrize("rate", [0.0, 1.0 / 64, 0.2, 1.0])
def test_bit_flip_mutation_rate(rate):
    masks = np.random.default_rng(0).random((2000, 64)) < 0.3
    mutated = operators.bit_flip_mutation(jax.random.PRNGKey(1), masks, rate)
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
    child_a, child_b = operators.uniform_crossover(key, parents_a, parents_b, 1.0, 0.5)
    a, b, ca, cb = map(np.asarray, (parents_a, parents_b, child_a, child_b))
    assert np.all((ca == a) | (ca == b)) and np.all((cb == a) | (cb == b))
    np.testing.assert_array_equal(ca.astype(int) + cb, a.astype(int) + b)  # genes are swapped, not made
    differ = a != b
    assert abs((ca[differ] == b[differ]).mean() - 0.5) < 0.02
    # No recombination: copies. Crossover rate: the fraction of recombined pairs.
    child_a, child_b = operators.uniform_crossover(key, parents_a, parents_b, 0.0, 0.5)
    np.testing.assert_array_equal(np.asarray(child_a), a)
    np.testing.assert_array_equal(np.asarray(child_b), b)
    child_a, _ = operators.uniform_crossover(key, parents_a, parents_b, 0.3, 1.0)
    recombined = np.any(np.asarray(child_a) != a, axis=1)
    assert abs(recombined.mean() - 0.3) < 0.06


def test_binary_tournament_prefers_rank_then_crowding():
    # Two distinct members per tournament, so with P = 10 member i wins with
    # probability 2 * (number of members it beats) / (P * (P - 1)).
    key, size, tournaments = jax.random.PRNGKey(0), 10, 20_000
    beats_none_to_all = np.arange(size)  # member i beats the i members before it in this order

    def win_rates(rank, crowding):
        winners = np.asarray(operators.binary_tournament(key, rank, crowding, tournaments))
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
    duplicate_of = np.asarray(operators.find_duplicates(offspring, parents))
    # new, parent 2, offspring 0, parent 1, new, offspring 0, offspring 4
    np.testing.assert_array_equal(duplicate_of, [-1, 2, 3, 1, -1, 3, 7])
    parent_fitness = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], np.float32)
    unknown = [np.nan, np.nan]
    fitness = np.array([[9.0, 0.0], unknown, unknown, unknown, [5.0, 4.0], unknown, unknown], np.float32)
    filled = np.asarray(operators.fill_duplicate_fitness(fitness, duplicate_of, parent_fitness))
    np.testing.assert_array_equal(
        filled, [[9, 0], [3, 3], [9, 0], [2, 2], [5, 4], [9, 0], [5, 4]]
    )


def test_find_duplicates_at_paper_size():
    parents = np.random.default_rng(0).random((30, 2048)) < 0.5
    offspring = parents[[4, 7]].copy()
    offspring[1, 5] = ~offspring[1, 5]
    np.testing.assert_array_equal(np.asarray(operators.find_duplicates(offspring, parents)), [4, -1])


def test_masks_from_genomes():
    genomes = np.array([[0.2, 0.5, 0.51, 1.3]])
    np.testing.assert_array_equal(
        np.asarray(operators.masks_from_genomes(genomes)), [[False, False, True, True]]
    )
    np.testing.assert_array_equal(np.asarray(operators.masks_from_genomes(genomes, 0.0)), [[True] * 4])
