"""Keras on the JAX backend: the one place that imports Keras for the package.

Keras fixes its backend when it is first imported, so whatever uses Keras
(the backbone, Grad-CAM, a head's export) asks for it here.
"""

from __future__ import annotations

import os
import sys


def prefer_jax_backend() -> None:
    """Sets ``KERAS_BACKEND=jax`` unless Keras is already imported (and quiets TensorFlow's logs).

    Imports nothing.

    Call it before importing anything that may import Keras: ``import tensorflow``
    imports Keras when it is installed, with the backend of ``~/.keras/keras.json``.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keras may import TensorFlow: no start-up chatter


def import_keras():
    """Imports Keras on the JAX backend and returns the module.

    Keras fixes its backend when first imported: this sets ``KERAS_BACKEND=jax``
    first (overriding ``~/.keras/keras.json``).

    Raises:
      RuntimeError: Keras was already imported with another backend.
    """
    prefer_jax_backend()
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"Keras was already imported with the {backend!r} backend, but evojax-prune runs "
            "ResNet-50 on JAX: set the environment variable KERAS_BACKEND=jax before Python starts "
            "(or before anything imports keras), e.g. `KERAS_BACKEND=jax python ...`"
        )
    return keras
