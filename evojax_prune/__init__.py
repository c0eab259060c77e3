"""evojax-prune: multi-objective evolutionary pruning of transfer-learning heads in JAX.

The public API, re-exported; see the README for a tour.
"""

from evojax_prune import config, data, head
from evojax_prune.config import (
    EngineConfig,
    HeadConfig,
    OodConfig,
    RunConfig,
    SearchConfig,
    TrainConfig,
    preset,
)
from evojax_prune.data.featureset import FeatureSet, FeatureSetError
from evojax_prune.run.search_result import SearchResult
from evojax_prune.score import mahalanobis, metrics, odin, ood_scores
from evojax_prune.score.evaluate import PopulationMetrics, evaluate_population
from evojax_prune.search import nsga2, operators, ranking
from evojax_prune.search.controls import RunControls
from evojax_prune.search.hypervolume import hypervolume
from evojax_prune.search.lockstep import RunsResult
from evojax_prune.search.loop import run_search, run_searches
from evojax_prune.search.nsga2 import NSGA2
from evojax_prune.search.resume import resume_search, resume_searches
from evojax_prune.selector import FeatureSelector
from evojax_prune.train.trainer import TrainedPopulation, train_population
from evojax_prune.version import __version__

__all__ = [
    "NSGA2",
    "EngineConfig",
    "FeatureSelector",
    "FeatureSet",
    "FeatureSetError",
    "HeadConfig",
    "OodConfig",
    "PopulationMetrics",
    "RunConfig",
    "RunControls",
    "RunsResult",
    "SearchConfig",
    "SearchResult",
    "TrainConfig",
    "TrainedPopulation",
    "__version__",
    "config",
    "data",
    "evaluate_population",
    "head",
    "hypervolume",
    "mahalanobis",
    "metrics",
    "nsga2",
    "odin",
    "ood_scores",
    "operators",
    "preset",
    "ranking",
    "resume_search",
    "resume_searches",
    "run_search",
    "run_searches",
    "train_population",
]
