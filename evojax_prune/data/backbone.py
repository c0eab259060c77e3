"""ResNet-50 features: the authors' frozen backbone, Keras 3 on the JAX backend.

The network is ``keras.applications.ResNet50(include_top=False, pooling="avg")``
(ResNet v1, 2048 features per image) with Keras' own
``keras.applications.resnet.preprocess_input`` ("caffe": RGB -> BGR, minus the
ImageNet channel means, no scaling), as in MO-EvoPruneDeepTL (arXiv 2302.10253)
and EvoPruneDeepTL (arXiv 2202.03844).

Weights, by the ``weights`` argument:

  * ``"imagenet"``: Keras' official file
    ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, taken from Keras'
    cache (``~/.keras/models``) and downloaded there on first use;
  * a path: a local copy of that file (or a Keras ``.weights.h5`` of the same
    network), for machines without internet;
  * ``None``: random weights, seeded, for tests only: such features are not
    ImageNet features, and :func:`weights_metadata` says so.

Keras and JAX are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evojax_prune.io.keras_backend import import_keras

FEATURE_DIM = 2048
MIN_IMAGE_SIZE = 32  # Keras' ResNet50 refuses smaller inputs
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS_FILE
)
# A mirror of that file (checked against the same MD5), for machines that cannot reach Google's.
WEIGHTS_URL_ENV = "EVOJAX_PRUNE_WEIGHTS_URL"
IMAGENET_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"  # keras.applications.resnet.WEIGHTS_HASHES
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)  # what preprocess_input subtracts, in BGR order
RANDOM_WEIGHTS_SEED = 0

Weights = str | os.PathLike | None


class WeightsUnavailableError(FileNotFoundError):
    """The backbone's weights cannot be had; the message says what to do."""


def weights_id(weights: Weights) -> str:
    """A short string that identifies the weights, for cache keys.

    ``"imagenet"`` (Keras' file, fixed by its MD5), ``"random"`` (``weights=None``,
    seeded) or ``"sha256:<first 16 hex digits>"`` of a local weights file.
    """
    if weights is None:
        return "random"
    if isinstance(weights, str) and weights == "imagenet":
        return "imagenet"
    return "sha256:" + _sha256(_existing_weights_file(weights))[:16]


def weights_metadata(weights: Weights) -> dict[str, Any]:
    """What a FeatureSet's metadata records about the weights (JSON-serialisable)."""
    if weights is None:
        return {
            "weights": "random",
            "random_weights": True,
            "warning": "random (untrained) weights: NOT ImageNet ResNet-50 features; for tests only",
            "seed": RANDOM_WEIGHTS_SEED,
        }
    if isinstance(weights, str) and weights == "imagenet":
        return {"weights": "imagenet", "random_weights": False, "file": IMAGENET_WEIGHTS_FILE,
                "md5": IMAGENET_WEIGHTS_MD5}
    path = _existing_weights_file(weights)
    return {"weights": "file", "random_weights": False, "file": str(path.resolve()), "sha256": _sha256(path)}


def imagenet_weights_file(keras_cache_dir: str | os.PathLike | None = None) -> Path:
    """The path of Keras' ImageNet weights file, downloaded into Keras' cache if missing.

    Args:
      keras_cache_dir: Keras' cache directory (default: Keras' own, ``~/.keras``
        or ``$KERAS_HOME``); the file lives in its ``models`` folder. It is
        downloaded from ``$EVOJAX_PRUNE_WEIGHTS_URL`` if set (a mirror), else
        from ``IMAGENET_WEIGHTS_URL``, and checked against its MD5.

    Raises:
      WeightsUnavailableError: the file is not cached and cannot be downloaded.
    """
    keras = import_keras()
    url = os.environ.get(WEIGHTS_URL_ENV) or IMAGENET_WEIGHTS_URL
    try:
        path = keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE,
            url,
            cache_subdir="models",
            file_hash=IMAGENET_WEIGHTS_MD5,
            cache_dir=None if keras_cache_dir is None else str(keras_cache_dir),
        )
    except Exception as error:  # Keras raises a bare Exception on a failed download
        raise WeightsUnavailableError(
            f"cannot get the ImageNet weights of ResNet-50 ({' '.join(str(error).split())[:200]}): "
            f"on a machine with internet, download {url} and either put it in "
            f"Keras' cache (~/.keras/models/{IMAGENET_WEIGHTS_FILE}) or pass its path "
            "(weights=PATH)"
        ) from None
    return Path(path)


def build_resnet50(image_size: int, weights: Weights = "imagenet", *,
                   keras_cache_dir: str | os.PathLike | None = None):
    """Keras' ``ResNet50(include_top=False, pooling="avg")`` for ``image_size`` square RGB images.

    Args:
      image_size: side S of the (S, S, 3) inputs; at least 32.
      weights: ``"imagenet"``, a path to a weights file, or ``None`` (random
        weights, seeded with ``RANDOM_WEIGHTS_SEED``: the same on every call).
      keras_cache_dir: where Keras caches the ImageNet weights (default: Keras' own).

    Returns:
      A ``keras.Model`` mapping (N, S, S, 3) preprocessed float32 images to (N, 2048) features.

    Raises:
      ValueError: ``image_size`` is below 32.
      WeightsUnavailableError: the weights file is missing, unreadable or cannot be downloaded.

    The last model built is kept and returned again for the same size and
    weights file (unchanged on disk): a process that extracts features and
    explains heads builds it once (ResNet-50 takes seconds to build). Callers must
    not change its weights.
    """
    return _built_model(*_model_key(image_size, weights, keras_cache_dir))


def _model_key(image_size: int, weights: Weights, keras_cache_dir) -> tuple:
    """(side, weights file or None, the file's (mtime, size) or None), checked; the file resolved first."""
    if int(image_size) < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be at least {MIN_IMAGE_SIZE} for ResNet-50, got {image_size}")
    # Resolve the file first: a missing file should fail before the slow build.
    if weights is None:
        return int(image_size), None, None
    if isinstance(weights, str) and weights == "imagenet":
        weights_file = imagenet_weights_file(keras_cache_dir)
    else:
        weights_file = _existing_weights_file(weights)
    stat = weights_file.stat()
    return int(image_size), str(weights_file.resolve()), (stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _built_model(side: int, weights_file: str | None, stamp: tuple[int, int] | None):
    keras = import_keras()
    previous_format = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")  # our images are (N, S, S, 3)
    try:
        # Only random weights need seeding: keras.utils.set_random_seed imports TensorFlow
        # (slow) and seeds it, and loaded weights replace the initial values anyway.
        with _seeded_keras(keras, RANDOM_WEIGHTS_SEED) if weights_file is None else contextlib.nullcontext():
            model = keras.applications.ResNet50(
                include_top=False, weights=None, pooling="avg", input_shape=(side, side, 3)
            )
    finally:
        keras.config.set_image_data_format(previous_format)
    if weights_file is not None:
        try:
            model.load_weights(str(weights_file))
        except Exception as error:  # h5py and Keras raise many kinds here
            raise WeightsUnavailableError(
                f"{weights_file}: cannot load it as ResNet-50 (include_top=False) weights "
                f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); pass Keras' "
                f"{IMAGENET_WEIGHTS_FILE} (from {IMAGENET_WEIGHTS_URL}) or weights='imagenet'"
            ) from None
    return model


def preprocess(images: np.ndarray) -> np.ndarray:
    """Keras' ``keras.applications.resnet.preprocess_input`` ("caffe") on a copy.

    Args:
      images: (N, S, S, 3) RGB values in 0..255, any real dtype (uint8 from the loaders).

    Returns:
      (N, S, S, 3) float32: channels reversed to BGR, minus ``CAFFE_BGR_MEANS``.
    """
    keras = import_keras()
    # preprocess_input subtracts in place on float input: hand it a fresh array.
    batch = np.array(images, dtype=np.float32, copy=True)
    return np.asarray(
        keras.applications.resnet.preprocess_input(batch, data_format="channels_last"), np.float32
    )


class FeatureExtractor:
    """A frozen ResNet-50 as a jitted function of fixed batch shape.

    Every batch is padded to ``batch_size`` images, so a call compiles once per
    image size, and the features do not depend on the batch size (inference-mode
    batch normalisation). Device work of one batch overlaps host decoding and
    preprocessing of the next (JAX dispatches asynchronously).

    Attributes:
      model: the ``keras.Model``.
      image_size: S of the (S, S, 3) inputs.
      batch_size: images per compiled call.
      weights: what the weights were built from (``"imagenet"``, a path or ``None``).
    """

    def __init__(self, model, batch_size: int = 64, weights: Weights = "imagenet"):
        import jax

        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.image_size = int(model.input_shape[1])
        self.batch_size = int(batch_size)
        self.weights = weights

        def forward(trainable, non_trainable, batch):
            features, _ = model.stateless_call(trainable, non_trainable, batch, training=False)
            return features

        self._forward = jax.jit(forward)

    def __call__(self, images, on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Features of ``images``.

        Args:
          images: (N, S, S, 3) RGB in 0..255: a numpy array, or anything with
            ``len()`` whose slices ``images[a:b]`` are such arrays (the loaders'
            lazily decoded images).
          on_batch: called as ``on_batch(done, N)`` after each finished batch.

        Returns:
          (N, 2048) float32 features.
        """
        total = len(images)
        features = np.empty((total, FEATURE_DIM), np.float32)
        padded_shape = (self.batch_size, self.image_size, self.image_size, 3)
        pending = None  # (start, count, device result) of the batch in flight
        # Read the variables now, not at construction: Keras' own fit/predict donate
        # their buffers and put new arrays in the variables.
        trainable = [variable.value for variable in self.model.trainable_variables]
        non_trainable = [variable.value for variable in self.model.non_trainable_variables]

        def finish(start: int, count: int, result) -> None:
            features[start:start + count] = np.asarray(result)[:count]
            if on_batch is not None:
                on_batch(start + count, total)

        for start in range(0, total, self.batch_size):
            batch = np.asarray(images[start:start + self.batch_size])
            count = batch.shape[0]
            if batch.shape[1:] != padded_shape[1:]:
                raise ValueError(
                    f"images must have shape (N, {self.image_size}, {self.image_size}, 3) for this "
                    f"backbone, found a batch of shape {batch.shape}"
                )
            padded = np.zeros(padded_shape, np.float32)
            padded[:count] = preprocess(batch)
            result = self._forward(trainable, non_trainable, padded)
            if pending is not None:
                finish(*pending)
            pending = (start, count, result)
        if pending is not None:
            finish(*pending)
        return features


def load_backbone(image_size: int, weights: Weights = "imagenet", *, batch_size: int = 64,
                  keras_cache_dir: str | os.PathLike | None = None) -> FeatureExtractor:
    """The authors' backbone, ready to call: ``load_backbone(300)(images) -> (N, 2048)``.

    See :func:`build_resnet50` for the arguments and errors. As the model, the
    last extractor is kept for the same arguments, compiled: extracting again
    in the same process neither builds nor compiles it again.
    """
    key = _model_key(image_size, weights, keras_cache_dir)
    return _extractor(key, batch_size, None if weights is None else os.fspath(weights))


@functools.lru_cache(maxsize=1)
def _extractor(model_key: tuple, batch_size: int, weights: str | None) -> FeatureExtractor:
    return FeatureExtractor(_built_model(*model_key), batch_size=batch_size, weights=weights)


def _existing_weights_file(weights: str | os.PathLike) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise WeightsUnavailableError(
            f"{path}: {what}; pass the path of a ResNet-50 weights file ({IMAGENET_WEIGHTS_FILE}, "
            f"from {IMAGENET_WEIGHTS_URL}), 'imagenet' for Keras' cached copy, or 'none' for random "
            "weights (tests only)"
        )
    try:
        import h5py  # Keras' own dependency: both weights formats are HDF5
    except ImportError:
        return path
    if not h5py.is_hdf5(path):
        raise WeightsUnavailableError(
            f"{path}: not an HDF5 file, so not Keras weights; pass {IMAGENET_WEIGHTS_FILE} "
            f"(from {IMAGENET_WEIGHTS_URL}) or 'imagenet' for Keras' cached copy"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _seeded_keras:
    """Seeds Keras' initialisers, and restores Python's and NumPy's global generators after.

    ``keras.utils.set_random_seed`` also reseeds ``random`` and ``np.random``;
    building a model should not change a caller's random streams.
    """

    def __init__(self, keras, seed: int):
        self._keras = keras
        self._seed = seed

    def __enter__(self):
        self._python_state = random.getstate()
        self._numpy_state = np.random.get_state()  # noqa: NPY002 -- saving the legacy global state
        self._keras.utils.set_random_seed(self._seed)
        return self

    def __exit__(self, *exc_info):
        random.setstate(self._python_state)
        np.random.set_state(self._numpy_state)  # noqa: NPY002
        return False
