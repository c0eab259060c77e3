"""What the search loop asks of a strategy, and the two kinds it runs.

* ``MultiObjective``: our NSGA-II on masks, all three objectives (MO-EvoPruneDeepTL).
* ``SingleObjective``: any evosax population-based algorithm on real-valued
  genomes, thresholded into masks, minimising the validation error alone (the
  predecessor, EvoPruneDeepTL, arXiv 2202.03844).

Both expose the same small surface: ``population_size``, ``num_offspring``,
``num_dims`` (the mask length), ``initial_population``, ``init``, ``ask``,
``tell`` (evosax's signatures, taking the (K, 3) objective matrix), ``masks``
(genomes -> (K, D) bool) and ``front`` (which members to report).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune.config import SearchConfig
from evojax_prune.search import nsga2, operators, ranking


class MultiObjective:
    """NSGA-II over (K, D) bool masks; fitness is the (K, 3) objective matrix."""

    kind = "nsga2"

    def __init__(self, search: SearchConfig, num_features: int):
        self.algorithm = nsga2.NSGA2(search.population_size, num_features, search.offspring_size)
        self.params = nsga2.params_from_config(search, num_features)
        self.population_size = self.algorithm.population_size
        self.num_offspring = self.algorithm.num_offspring
        self.num_dims = num_features  # the mask length

    def initial_population(self, key: jax.Array, seeds: np.ndarray | None = None) -> jax.Array:
        """(P, D) bool; ``seeds`` (K, D) take the first K places (a warm start)."""
        return self.algorithm.initial_population(key, self.params, seeds)

    def init(self, key, population, objectives):
        return self.algorithm.init(key, population, jnp.asarray(objectives), self.params)

    def ask(self, key, state):
        return self.algorithm.ask(key, state, self.params)

    def tell(self, key, population, objectives, state):
        state, _ = self.algorithm.tell(key, population, jnp.asarray(objectives), state, self.params)
        return state

    def masks(self, genomes: Any) -> np.ndarray:
        return np.asarray(genomes, bool)

    def front(self, objectives: np.ndarray) -> np.ndarray:
        """(K,) bool: the non-dominated members."""
        return np.asarray(ranking.non_dominated_rank(jnp.asarray(objectives))) == 0


class SingleObjective:
    """An evosax population-based algorithm minimising the validation error.

    Genomes are real vectors of length D; a feature is kept where its gene
    exceeds ``threshold`` (``operators.masks_from_genomes``). The initial genomes
    are the authors' initial masks as 0.0 / 1.0, so the first generation is the
    same as NSGA-II's.
    """

    kind = "evosax"

    def __init__(self, algorithm: Any, num_features: int, min_active: int, threshold: float = 0.5):
        if getattr(algorithm, "num_dims", None) != num_features:
            raise ValueError(
                f"the evosax algorithm works on {getattr(algorithm, 'num_dims', None)} dimensions, "
                f"the features have {num_features}: build it with solution=jnp.zeros({num_features})"
            )
        if not hasattr(algorithm, "population_size") or not hasattr(algorithm, "tell"):
            raise TypeError(f"{type(algorithm).__name__} is not an evosax population-based algorithm")
        self.algorithm = algorithm
        self.params = algorithm.default_params
        self.population_size = self.num_offspring = algorithm.population_size
        self.num_features, self.min_active, self.threshold = num_features, min_active, threshold
        self.num_dims = num_features  # the mask length

    def initial_population(self, key: jax.Array, seeds: np.ndarray | None = None) -> jax.Array:
        """(P, D) float32 genomes 0.0 / 1.0; ``seeds`` (K, D) take the first K places."""
        masks = operators.init_masks(key, self.population_size, self.num_features, self.min_active)
        if seeds is not None:
            masks = operators.seed_population(jax.random.fold_in(key, 2), masks, seeds, self.min_active)
        return masks.astype(jnp.float32)

    def init(self, key, population, objectives):
        return self.algorithm.init(key, population, jnp.asarray(objectives)[:, 0], self.params)

    def ask(self, key, state):
        return self.algorithm.ask(key, state, self.params)

    def tell(self, key, population, objectives, state):
        state, _ = self.algorithm.tell(key, population, jnp.asarray(objectives)[:, 0], state, self.params)
        return state

    def masks(self, genomes: Any) -> np.ndarray:
        return np.asarray(operators.masks_from_genomes(jnp.asarray(genomes), self.threshold))

    def front(self, objectives: np.ndarray) -> np.ndarray:
        """(K,) bool: the members with the lowest error."""
        return objectives[:, 0] == objectives[:, 0].min()


def check_mask_bounds(search: SearchConfig, length: int) -> None:
    """Refuses ``min_active`` / ``max_features`` that a chromosome of ``length`` bits cannot meet.

    (``SearchConfig`` checks the two against each other; only the chromosome knows its length:
    the features D, or the neurons ``HeadConfig.prune`` prunes.)
    """
    if search.min_active > length:
        raise ValueError(f"search.min_active = {search.min_active} exceeds the chromosome's {length} bits")
    if search.max_features is not None and search.max_features > length:
        raise ValueError(f"search.max_features = {search.max_features} exceeds the chromosome's {length} "
                         f"bits (it must lie in [min_active = {search.min_active}, {length}])")


def build(search: SearchConfig, num_features: int, algorithm: Any = None):
    """The strategy a run uses: NSGA-II from the config, or the evosax ``algorithm`` given."""
    check_mask_bounds(search, num_features)
    if algorithm is None:
        return MultiObjective(search, num_features)
    if search.max_features is not None:
        # Its genomes are real vectors the algorithm moves freely: a repaired mask would not be
        # the genome it is told about.
        raise ValueError("search.max_features applies to NSGA-II's masks, not to an evosax algorithm's "
                         "genomes: leave it None with algorithm=")
    return SingleObjective(algorithm, num_features, search.min_active)
