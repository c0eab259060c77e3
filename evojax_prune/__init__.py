"""evojax-prune: multi-objective evolutionary pruning of transfer-learning heads in JAX."""

__version__ = "0.1.0"
