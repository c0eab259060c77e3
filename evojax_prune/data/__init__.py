"""Feature sets: the arrays a search runs on, their file format and where they come from."""

from evojax_prune.data import embedded, featureset
from evojax_prune.data.featureset import FeatureSet, FeatureSetError

__all__ = ["FeatureSet", "FeatureSetError", "embedded", "featureset"]
