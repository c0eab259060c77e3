"""The optax optimizer a ``TrainConfig`` names, and which optimizers allow training kept rows only."""

from __future__ import annotations

import optax

from evojax_prune.config import TrainConfig
from evojax_prune.train.keras_sgd import keras_sgd

# Optimizers whose update of a weight depends only on that weight's own gradient
# history (no weight decay, no norms over a layer, no factored moments): a weight
# whose gradient is always zero never moves, so training only the kept rows of
# the first kernel is the same as training the masked dense kernel.
ROW_SEPARABLE_OPTIMIZERS = frozenset(
    {"sgd", "adam", "nadam", "adamax", "amsgrad", "rmsprop", "adagrad", "adabelief", "yogi"}
)


def make_optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer named by ``train_config.optimizer``.

    ``sgd`` is ``optax.sgd(learning_rate, momentum, nesterov)`` (the paper's
    Keras SGD), or with ``lr_decay`` Keras' own SGD with that decay
    (``keras_sgd``); any other name is ``getattr(optax, name)(learning_rate,
    **optimizer_options)``.
    """
    options = dict(train_config.optimizer_options)
    if train_config.optimizer == "sgd" and train_config.lr_decay:
        if options:
            raise ValueError(f"TrainConfig.lr_decay (Keras' SGD) takes no optimizer_options, got {options}")
        return keras_sgd(train_config.learning_rate, train_config.momentum, train_config.nesterov,
                         train_config.lr_decay)
    if train_config.optimizer == "sgd":
        return optax.sgd(
            train_config.learning_rate,
            momentum=train_config.momentum or None,
            nesterov=train_config.nesterov,
            **options,
        )
    return getattr(optax, train_config.optimizer)(train_config.learning_rate, **options)
