"""Ranking, crowding distance and NSGA-II survival (search/ranking.py) against pymoo."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune.search import ranking

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
            rank = ranking.non_dominated_rank(jnp.asarray(fitness), method=method)
            assert rank.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(rank), expected, err_msg=f"{method}, {kind}")


def test_rank_auto_picks_a_method_by_shape():
    for num_points, num_objectives in [(300, 2), (3, 3), (1100, 3)]:  # sweep, peel, chain
        fitness = random_objectives(num_points, num_points, num_objectives, "ties")
        np.testing.assert_array_equal(np.asarray(ranking.non_dominated_rank(fitness)), pymoo_rank(fitness))


def test_rank_small_tiles_cover_every_block_path():
    # Small blocks (many of them), tiles overlapping the block, the last tiles clamped.
    fitness = random_objectives(5, 333, 3, "ties")
    for block, chunk in [(8, 100)]:
        rank = ranking.non_dominated_rank(jnp.asarray(fitness), method="chain", block=block, chunk=chunk)
        np.testing.assert_array_equal(np.asarray(rank), pymoo_rank(fitness), err_msg=f"{block}/{chunk}")


def test_rank_basic_facts():
    fitness = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0], [2.0, 2.0], [3.0, 3.0], [-0.0, 2.0], [0.0, 2.0]])
    # Identical points (also -0.0 and 0.0) share a rank; a dominated point is one further.
    np.testing.assert_array_equal(np.asarray(ranking.non_dominated_rank(fitness)), [0, 0, 0, 1, 2, 0, 0])
    dominates = np.asarray(ranking.dominance_matrix(fitness))
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
            np.asarray(ranking.non_dominated_rank(jnp.asarray(fitness), method=method)), expected
        )
    # A repeated point must not pass for a dominator of an infinite one.
    if num_objectives == 3:
        fitness = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, np.inf, np.nan]])
        for method in methods:
            assert ranking.non_dominated_rank(fitness, method=method).tolist() == [0, 0, 1]


def test_rank_rejects_bad_input():
    with pytest.raises(ValueError, match="sweep"):
        ranking.non_dominated_rank(jnp.zeros((4, 3)), method="sweep")
    with pytest.raises(ValueError, match="method"):
        ranking.non_dominated_rank(jnp.zeros((4, 3)), method="fast")
    with pytest.raises(ValueError, match=r"\(N, M\)"):
        ranking.non_dominated_rank(jnp.zeros((4,)))


def test_rank_at_twenty_thousand_points():
    fitness = random_objectives(11, 20_000, 3, "continuous")
    rank = ranking.non_dominated_rank(jnp.asarray(fitness))
    np.testing.assert_array_equal(np.asarray(rank), pymoo_rank(fitness))


# ---------------------------------------------------------------------------
# Crowding and survival
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("num_points", "num_objectives"), [(2, 2), (5, 3), (40, 2), (300, 3), (1000, 3)])
def test_crowding_matches_pymoo(num_points, num_objectives):
    for kind in ("ties", "continuous", "constant_column"):
        fitness = random_objectives(num_points + 7 * num_objectives, num_points, num_objectives, kind)
        rank = pymoo_rank(fitness)
        ours = ranking.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank))
        assert_crowding_equal(ours, pymoo_crowding(fitness, rank))


def test_crowding_duplicates_follow_stable_order():
    # Three copies of one point between two extremes: pymoo's stable sort gives the
    # first copy a gap to its left, the last one a gap to its right, the middle 0.
    fitness = np.array([[0.0, 4.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [4.0, 0.0]], np.float32)
    rank = np.zeros(5, np.int32)
    ours = np.asarray(ranking.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank)))
    assert_crowding_equal(ours, pymoo_crowding(fitness, rank))
    np.testing.assert_allclose(ours[1:4], [0.5, 0.0, 0.5])


def test_crowding_with_infinite_objectives_matches_pymoo():
    fitness = random_objectives(9, 80, 3, "ties")
    fitness[::9, 2] = np.inf
    rank = pymoo_rank(fitness)
    with np.errstate(invalid="ignore"):
        reference = pymoo_crowding(fitness, rank)
    assert_crowding_equal(ranking.crowding_distance(jnp.asarray(fitness), jnp.asarray(rank)), reference)


@pytest.mark.parametrize(("num_points", "num_objectives", "seed"), [(100, 2, 0), (401, 3, 1)])
def test_select_survivors_matches_pymoo_rank_and_crowding(num_points, num_objectives, seed):
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    fitness = random_objectives(seed, num_points, num_objectives, "continuous")  # no ties at the cut
    num_survivors = num_points // 2
    survivors, rank, crowding = ranking.select_survivors(jnp.asarray(fitness), num_survivors)
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
    survivors, rank, crowding = ranking.select_survivors(fitness, 5)
    assert np.asarray(survivors).tolist() == [0, 1, 2, 5, 3]
    assert np.asarray(rank).tolist() == [0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(np.asarray(crowding)[2:6], [0.5, 0.0, 0.0, 0.5])

