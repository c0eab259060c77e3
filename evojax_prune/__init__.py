"""evojax-prune: multi-objective evolutionary pruning of transfer-learning heads in JAX.

The public API, re-exported; see the README for a tour.
"""

__version__ = "0.1.0"

from evojax_prune import config, data
from evojax_prune.config import (
    HeadConfig,
    OdinConfig,
    RunConfig,
    SearchConfig,
    TrainConfig,
    preset,
)
from evojax_prune.data.featureset import FeatureSet, FeatureSetError

__all__ = [
    "FeatureSet",
    "FeatureSetError",
    "HeadConfig",
    "OdinConfig",
    "RunConfig",
    "SearchConfig",
    "TrainConfig",
    "__version__",
    "config",
    "data",
    "preset",
]
