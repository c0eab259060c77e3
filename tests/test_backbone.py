"""The ResNet-50 backbone: preprocessing, batching, weights. Random weights, 32x32 images."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Not importorskip: importing keras here would fix its backend before the backbone can.
if importlib.util.find_spec("keras") is None:
    pytest.skip("the features extra (keras) is not installed", allow_module_level=True)

from evojax_prune.data import backbone
from evojax_prune.io import keras_backend

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return backbone.build_resnet50(SIZE, weights=None)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(9, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def extractor(model):
    return backbone.FeatureExtractor(model, batch_size=4, weights=None)


def test_preprocess_is_keras_caffe_by_hand():
    keras = keras_backend.import_keras()  # not `import keras`: that would pick the backend from keras.json

    rgb = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3) * 10
    expected = rgb[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    out = backbone.preprocess(rgb)
    assert out.dtype == np.float32 and out.shape == rgb.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        out, keras.applications.resnet.preprocess_input(rgb.astype(np.float32)), rtol=0, atol=0
    )
    floats = rgb.astype(np.float32)
    backbone.preprocess(floats)
    np.testing.assert_array_equal(floats, rgb.astype(np.float32))  # the input is left alone
    assert keras.backend.backend() == "jax"


def test_features_do_not_depend_on_the_batch_size_and_are_keras_predict_on_preprocessed_input(
    model, extractor, images
):
    keras = keras_backend.import_keras()
    by_4 = extractor(images)  # 4 + 4 + 1 padded to 4
    by_9 = backbone.FeatureExtractor(model, batch_size=9, weights=None)(images)
    assert by_4.shape == (9, backbone.FEATURE_DIM) and by_4.dtype == np.float32
    assert np.all(np.isfinite(by_4)) and np.std(by_4) > 0
    # Up to float32 reassociation: 53 convolutions at another batch size (features up to ~10;
    # with the packages of 2026-12-03 one of 18,432 differs by 1.2e-5, the same one every run).
    np.testing.assert_allclose(by_4, by_9, rtol=1e-5, atol=5e-5)

    # Keras' own path, with Keras' own preprocessing: the same features.
    reference = model.predict(
        keras.applications.resnet.preprocess_input(images.astype(np.float32)), batch_size=9, verbose=0
    )
    np.testing.assert_allclose(by_4, reference, rtol=1e-5, atol=5e-5)
    # ... and not those of the raw pixels: the preprocessing is really applied.
    raw = model.predict(images.astype(np.float32), batch_size=9, verbose=0)
    assert np.max(np.abs(raw - by_4)) > 1e-2


def test_progress_callback_counts_finished_images(extractor, images):
    calls = []
    extractor(images, on_batch=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 9), (8, 9), (9, 9)]
    assert extractor(images[:0]).shape == (0, backbone.FEATURE_DIM)


def test_wrong_image_shape_is_named(model, extractor):
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\).*\(2, 40, 40, 3\)"):
        extractor(np.zeros((2, 40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="batch size"):
        backbone.FeatureExtractor(model, batch_size=0)


def test_random_weights_are_seeded_and_leave_global_generators_alone(model):
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    again = backbone.build_resnet50(SIZE, weights=None)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    meta = backbone.weights_metadata(None)
    assert meta["random_weights"] is True and "NOT ImageNet" in meta["warning"]
    assert backbone.weights_id(None) == "random" and backbone.weights_id("imagenet") == "imagenet"


def test_local_weights_file_round_trip(model, tmp_path):
    path = tmp_path / "resnet.weights.h5"
    model.save_weights(str(path))
    loaded = backbone.build_resnet50(SIZE, weights=path)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert backbone.weights_id(path).startswith("sha256:")
    meta = backbone.weights_metadata(path)
    assert meta["random_weights"] is False and meta["file"] == str(path.resolve())
    assert len(meta["sha256"]) == 64


def test_missing_weights_file_says_what_to_do(tmp_path):
    missing = tmp_path / "resnet50_notop.h5"
    with pytest.raises(backbone.WeightsUnavailableError) as error:
        backbone.build_resnet50(SIZE, weights=missing)
    message = str(error.value)
    assert str(missing) in message and "no such file" in message
    assert backbone.IMAGENET_WEIGHTS_FILE in message and "'imagenet'" in message
    with pytest.raises(FileNotFoundError):  # so the CLI reports it as an input error
        backbone.weights_id(missing)


def test_unreadable_weights_file_is_named(tmp_path):
    import h5py

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(backbone.WeightsUnavailableError, match=r"garbage\.h5: not an HDF5 file"):
        backbone.weights_id(garbage)  # before any data is loaded or model built
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["something"] = np.zeros(3)
    with pytest.raises(backbone.WeightsUnavailableError, match=r"other\.h5: cannot load it as ResNet-50"):
        backbone.build_resnet50(SIZE, weights=other)


def test_imagenet_weights_without_internet_or_cache_say_what_to_do(tmp_path, monkeypatch):
    # Port 9 on loopback refuses at once: a download that cannot happen, even where internet exists.
    unreachable = "http://127.0.0.1:9/" + backbone.IMAGENET_WEIGHTS_FILE
    monkeypatch.setenv(backbone.WEIGHTS_URL_ENV, unreachable)
    with pytest.raises(backbone.WeightsUnavailableError) as error:
        backbone.build_resnet50(SIZE, weights="imagenet", keras_cache_dir=tmp_path)
    message = str(error.value)
    assert "cannot get the ImageNet weights" in message
    assert backbone.IMAGENET_WEIGHTS_FILE in message and "weights=PATH" in message  # Python's argument
    from evojax_prune.cli.main import as_flags

    assert "--weights PATH" in as_flags(message)  # what the command prints


def test_image_size_below_32_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        backbone.build_resnet50(16, weights=None)


def test_keras_imported_with_another_backend_is_refused():
    # The module alone, loaded from its file: the package would import JAX first (slow, irrelevant).
    code = textwrap.dedent(
        f"""
        import importlib.util, os
        os.environ["KERAS_BACKEND"] = "numpy"
        import keras
        spec = importlib.util.spec_from_file_location("keras_backend", {keras_backend.__file__!r})
        keras_backend = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(keras_backend)
        try:
            keras_backend.import_keras()
        except RuntimeError as error:
            print("refused:", error)
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "'numpy' backend" in result.stdout
    assert "KERAS_BACKEND=jax" in result.stdout
