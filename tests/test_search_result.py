"""SearchResult out of the tool: load and save, a table, compact heads, predictions and a Keras export."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from image_folders import write_random_folder
from report_runs import tiny_config

import evojax_prune as ep
from evojax_prune import head
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.io import keras_backend
from evojax_prune.run import keras_export


@pytest.fixture(scope="module")
def in_memory():
    """A search run with out_dir=None: (SearchResult, the digits)."""
    digits = embedded.digits()
    return ep.run_search(digits, tiny_config(), seed=1), digits


def hashes(directory):
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def assert_same_fields(loaded, result):
    for field in dataclasses.fields(ep.SearchResult):
        ours, theirs = getattr(loaded, field.name), getattr(result, field.name)
        if field.name in ("params", "baseline_params"):
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
                np.testing.assert_array_equal(a, b)
        elif field.name in ("validation", "test"):
            assert sorted(ours) == sorted(theirs)
            for name in ours:
                np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        elif field.name == "masks":
            np.testing.assert_array_equal(ours, theirs)
        else:  # JSON round trip: the same values, as JSON holds them
            assert json.loads(json.dumps(ours, default=str)) == json.loads(json.dumps(theirs, default=str)), \
                field.name


def test_save_then_load_round_trips_every_field(in_memory, tmp_path):
    result, _ = in_memory
    assert result.provenance["num_features"] == 64 and result.provenance["strategy"] == "nsga2"
    path = result.save(tmp_path / "saved")
    loaded = ep.SearchResult.load(path)
    assert_same_fields(loaded, result)
    assert loaded.config == result.config
    with np.load(path / "pareto.npz") as archive:  # the file says what its full-width kernels are
        assert "NOT weights" in str(archive["note"])
    # What the CLI reads too.
    assert cli.main(["report", str(path)]) == 0


def test_load_reads_what_a_search_wrote(tiny_run):
    result, out = tiny_run
    assert_same_fields(ep.SearchResult.load(out), result)


def test_save_refuses_an_existing_run_and_changes_no_byte(in_memory, tiny_run, tmp_path, capsys):
    result, _ = in_memory
    _, out = tiny_run
    before = hashes(out)
    with pytest.raises(ValueError, match="overwrite"):
        result.save(out)
    assert hashes(out) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        result.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_to_pandas_has_a_row_per_member_and_every_metric(in_memory):
    result, _ = in_memory
    table = result.to_pandas("test")
    assert list(table["member"]) == list(range(len(result.masks)))
    np.testing.assert_array_equal(table["active"], result.masks.sum(axis=1))
    for name, values in result.test.items():
        if name != "mem":
            np.testing.assert_array_equal(table[name], values)
    np.testing.assert_array_equal(table["mem"], result.validation["mem"])
    assert set(table["ood_score"]) == {result.config.ood.score}
    with pytest.raises(ValueError, match="split must be"):
        result.to_pandas("train")


def test_to_pandas_without_pandas_says_what_to_install(in_memory, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"evojax-prune\[tables\]"):
        in_memory[0].to_pandas()


def test_head_and_predict_are_the_members_trained_head(in_memory):
    result, digits = in_memory
    for member in ("accuracy", "mem", "auroc", -1):
        index = result.member_index(member)
        one = jax.tree.map(lambda leaf, i=index: leaf[i], result.params)
        logits = np.asarray(head.apply(one, result.masks[index], digits.x_test))
        compact = result.head(member)
        assert len(compact.feature_indices) == result.masks[index].sum()
        np.testing.assert_allclose(compact.logits(digits.x_test), logits, rtol=1e-5, atol=1e-5)
        predicted = result.predict(digits.x_test, member)
        np.testing.assert_array_equal(predicted, logits.argmax(axis=1))
        assert np.mean(predicted == digits.y_test) == pytest.approx(result.test["accuracy"][index])
    with pytest.raises(ValueError, match=r"x must be \(N, D = 64\)"):
        result.predict(digits.x_test[:, :10])


LOAD_WITH_KERAS_ALONE = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import keras, numpy as np
    model = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], np.asarray(model(np.load(sys.argv[2]))))
    assert "evojax_prune" not in sys.modules, "the model needed evojax_prune"
    print(model.count_params(), sum(int(np.prod(w.shape)) for w in model.trainable_weights))
""")


@pytest.mark.parametrize("inputs", ["features", "kept"])
def test_an_exported_head_loads_in_plain_keras_and_gives_the_heads_logits(in_memory, tmp_path, inputs):
    result, digits = in_memory
    index = result.member_index("mem")
    compact = result.head(index)
    path = result.export(index, tmp_path / "head.keras", inputs=inputs)
    x = digits.x_test if inputs == "features" else digits.x_test[:, compact.feature_indices]
    np.save(tmp_path / "x.npy", x)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOAD_WITH_KERAS_ALONE, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), compact.logits(digits.x_test), rtol=1e-5,
                               atol=1e-5)
    total, trainable = map(int, done.stdout.split()[-2:])
    assert trainable == compact.num_parameters  # only the kept units are trained weights
    assert total == trainable + (64 * len(compact.feature_indices) if inputs == "features" else 0)
    record = keras_export.read_record(path)
    assert record["feature_indices"] == compact.feature_indices.tolist() and record["member"] == index
    assert record["validation"]["accuracy"] == pytest.approx(result.validation["accuracy"][index])


def test_export_command_writes_a_model_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    _, out = tiny_run
    target = tmp_path / "best.keras"
    assert cli.main(["export", str(out), "--member", "accuracy", "--out", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out and target.is_file()
    before = target.read_bytes()
    assert cli.main(["export", str(out), "--member", "0", "--out", str(target)]) == 2
    assert "exists" in capsys.readouterr().err and target.read_bytes() == before
    assert cli.main(["export", str(out), "--member", "99", "--out", str(tmp_path / "x.keras")]) == 2
    assert "the front has" in capsys.readouterr().err and not (tmp_path / "x.keras").exists()
    assert cli.main(["export", str(out), "--out", str(tmp_path / "x.h5")]) == 2
    assert "must end in .keras" in capsys.readouterr().err
    # The digits are pixel values, not a backbone's features: no backbone to export.
    assert cli.main(["export", str(out), "--with-backbone", "--out", str(tmp_path / "x.keras")]) == 2
    assert "were not made by 'evojax-prune extract'" in capsys.readouterr().err
    assert not (tmp_path / "x.keras").exists()


IMAGE_SIZE = 32  # the smallest ResNet-50 takes: the backbone's cost is in its size


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A tiny search on features ``extract`` made from an image folder with random weights:
    (SearchResult, its run directory, the FeatureSet, the test images as extract resized them)."""
    from evojax_prune.data import extract, images

    base = tmp_path_factory.mktemp("images")
    ind = write_random_folder(base / "ind", {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 2}}, 0, 36)
    ood = write_random_folder(base / "ood", {"train": {"p": 6, "q": 6}}, 1, 36)
    features = extract.extract_featureset(ind, [ood], image_size=IMAGE_SIZE, weights=None, batch_size=4,
                                          use_cache=False)
    config = tiny_config().replace(search={"population_size": 4, "generations": 1})
    out = base / "run"
    result = ep.run_search(features, config, seed=0, out_dir=out)
    test_images = np.asarray(images.load_dataset(ind).splits["test"].images(IMAGE_SIZE, resize="bilinear"))
    return result, out, features, test_images


def test_the_caffe_preprocessing_layer_is_keras_preprocess_input():
    keras = keras_backend.import_keras()
    rgb = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 5, 3)).astype(np.float32)
    expected = keras.applications.resnet50.preprocess_input(rgb.copy())
    np.testing.assert_array_equal(np.asarray(keras_export.caffe_preprocessing()(rgb)), expected)


def test_an_export_with_the_backbone_takes_images_to_the_heads_logits_in_plain_keras(image_run, tmp_path,
                                                                                      capsys):
    result, out, features, test_images = image_run
    index = result.member_index("mem")
    compact = result.head(index)
    path = tmp_path / "images.keras"
    assert cli.main(["export", str(out), "--member", "mem", "--with-backbone", "--out", str(path)]) == 0
    printed = capsys.readouterr()
    assert "takes (N, 32, 32, 3) RGB images" in printed.out and "random weights" in printed.err
    np.save(tmp_path / "x.npy", test_images)  # uint8 RGB, (N, 32, 32, 3)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOAD_WITH_KERAS_ALONE, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    # The head on the features extract computed from the same images: the same logits.
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), compact.logits(features.x_test), rtol=1e-4,
                               atol=1e-4)
    _, trainable = map(int, done.stdout.split()[-2:])
    assert trainable == compact.num_parameters  # the backbone is frozen, the one-hot fixed
    record = keras_export.read_record(path)
    assert record["inputs"] == "images" and record["images"]["shape"] == [IMAGE_SIZE, IMAGE_SIZE, 3]
    assert record["images"]["resize"] == "bilinear" and record["images"]["backbone"]["random_weights"]
    assert record["feature_indices"] == compact.feature_indices.tolist()


def test_an_export_with_the_backbone_refuses_what_it_cannot_build(image_run, in_memory, tmp_path):
    result, _, _, _ = image_run
    with pytest.raises(ValueError, match="not inputs='kept'"):
        result.export(0, tmp_path / "a.keras", inputs="kept", with_backbone=True)
    with pytest.raises(ValueError, match="random backbone weights"):
        result.export(0, tmp_path / "a.keras", with_backbone=True, backbone_weights=tmp_path / "w.h5")
    digits_run, _ = in_memory
    with pytest.raises(ValueError, match=r"'digits' \(sklearn.datasets.load_digits.*records no backbone"):
        digits_run.export(0, tmp_path / "a.keras", with_backbone=True)
    # A run whose features came from a weights file: the file must be there, and the same one.
    import h5py

    weights = tmp_path / "resnet.weights.h5"
    with h5py.File(weights, "w") as file:
        file["w"] = np.zeros(3)
    gone = {"weights": "file", "file": str(tmp_path / "gone.h5"), "sha256": "0" * 64}
    recorded = {"name": "x", "image_size": 32, "backbone": gone}
    with pytest.raises(FileNotFoundError, match=r"gone\.h5: no such file.*backbone_weights=PATH"):
        keras_export.backbone_weights(recorded)
    with pytest.raises(FileNotFoundError, match="not the weights the run's features were extracted with"):
        keras_export.backbone_weights(recorded, weights)
    imagenet = {"name": "x", "image_size": 32, "backbone": {"weights": "imagenet", "md5": "0" * 32}}
    with pytest.raises(FileNotFoundError, match="imagenet weights, digest 0000"):
        keras_export.backbone_weights(imagenet, weights)
    assert not list(tmp_path.glob("*.keras"))
