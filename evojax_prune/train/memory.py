"""Per-head memory: the one model that sizes training chunks, scoring chunks and the kept heads.

``EngineConfig.memory_budget_mb`` is the device memory the engine may spend
on heads. Three decisions read it, each through this module:

  * the training chunk (``plan.choose_chunk_size``): ``training_bytes`` per head;
  * the scoring chunk (``evaluate.auto_chunk_size``): ``scoring_bytes`` per head;
  * whether a search keeps its population's trained heads on the device
    (``search.evaluator``): ``param_bytes`` per head.

Each is an estimate of one head's share (dense upper bounds, float32), so a
chunk of k heads needs about k times it; ``heads_within`` turns a budget and a
per-head figure into a head count. docs/benchmarks.md compares the estimates
with XLA's memory analysis.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from evojax_prune import head
from evojax_prune.config import TrainConfig
from evojax_prune.train.optimizer import make_optimizer

FLOAT_BYTES = 4
MIB = 2**20


def budget_bytes(memory_budget_mb: float) -> float:
    """``EngineConfig.memory_budget_mb`` in bytes."""
    return memory_budget_mb * MIB


def heads_within(memory_budget_mb: float, bytes_per_head: float) -> int:
    """Most heads of ``bytes_per_head`` each that fit in the budget (at least 1)."""
    return max(1, int(budget_bytes(memory_budget_mb) // bytes_per_head))


def param_bytes(num_features: int, num_classes: int, hidden: int, hidden_layers: int = 1) -> int:
    """One head's float32 parameters: D*H + (layers - 1)*H*H + H*C + C floats."""
    return head.param_bytes(num_features, num_classes, hidden, hidden_layers)


def _tree_bytes(tree: Any) -> int:
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def training_bytes(num_features: int, num_classes: int, hidden: int, train_config: TrainConfig,
                   hidden_layers: int = 1) -> int:
    """Device memory one head needs while it trains (dense upper bound).

    Parameters (``param_bytes``), the optimizer state (``optax`` tells its
    shapes: one more copy of the parameters for SGD with momentum, two for
    Adam), the best-weights copy (with ``restore_best``), the gradient, the
    update and the returned full-width kernel (one copy each) and the
    activations of one minibatch (the masked input B*D, a few B*H hidden
    buffers and B*C logits).
    """
    params = jax.eval_shape(lambda: head.init(jax.random.key(0), num_features, num_classes, hidden,
                                              hidden_layers))
    opt_state = jax.eval_shape(make_optimizer(train_config).init, params)
    copies = 4 + int(train_config.restore_best)  # params, gradient, update, output, best
    activations = train_config.batch_size * (num_features + 4 * hidden * hidden_layers + 4 * num_classes)
    return copies * _tree_bytes(params) + _tree_bytes(opt_state) + activations * FLOAT_BYTES


def scoring_bytes(num_rows: int, num_features: int, hidden: int, num_classes: int, perturb: bool,
                  num_train_rows: int = 0) -> int:
    """Temporary memory of one head inside a scoring chunk (``evaluate_population``).

    Dominated by the masked input ``head.apply`` builds, (rows, D) float32,
    which XLA keeps about twice, plus hidden activations and logits; the ODIN
    perturbation's gradient and perturbed features double it. A score fitted
    on the training split (``num_train_rows`` > 0: Mahalanobis) adds the
    training rows' masked input and activations (and their centred copy),
    (N_t, D + 2 H), the covariance, its eigenvectors and the whitening, 3 H^2,
    and the whitened differences to the C class means, (rows, C, H). The
    parameters themselves are read in place and not counted.
    """
    per_head = num_rows * (2 * num_features + hidden + num_classes) * FLOAT_BYTES
    per_head *= 2 if perturb else 1
    if num_train_rows:
        per_head += FLOAT_BYTES * (num_train_rows * (num_features + 2 * hidden) + 3 * hidden * hidden
                                   + num_rows * num_classes * hidden)
    return per_head
