"""Image folders and TFDS data sets: listing, fingerprints, decoding, resizing, the authors' sizes."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from image_folders import write_folder, write_image
from PIL import Image

from evojax_prune.data import images


def test_folder_layout_labels_and_decoding(tmp_path):
    root = write_folder(tmp_path / "shapes", {"train": {"b": 3, "a": 2}, "test": {"a": 1, "b": 1}})
    write_image(root / "train" / "a" / "upper.PNG", (1, 2, 3))  # extensions in any case
    write_image(root / "train" / "a" / "grey.jpg", 128, mode="L")  # grey JPEG: converted to RGB
    (root / "train" / "a" / "notes.txt").write_text("not an image")  # ignored, as by ImageFolder
    (root / "train" / "b" / ".hidden.png").write_bytes(b"ignored")
    (root / "README").write_text("ignored")

    dataset = images.load_folder(root)
    assert dataset.name == "shapes" and dataset.source == f"folder:{root.resolve()}"
    assert dataset.class_names == ("a", "b")
    assert sorted(dataset.splits) == ["test", "train"]
    train = dataset.splits["train"]
    assert [p.name for p in train.items] == ["grey.jpg", "img00.png", "img01.png", "upper.PNG",
                                             "img00.png", "img01.png", "img02.png"]
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 0, 1, 1, 1])
    assert train.labels.dtype == np.int32

    decoded = train.images(32)
    assert len(decoded) == 7
    pixels = decoded[0:7]
    assert pixels.shape == (7, 32, 32, 3) and pixels.dtype == np.uint8
    assert np.all(pixels[0] == 128)  # grey -> RGB
    assert np.all(pixels[3] == (1, 2, 3))  # solid colours survive the bilinear resize exactly
    assert np.all(pixels[6] == (10, 10, 2))  # train is split 1, 'b' is class 1, third image
    np.testing.assert_array_equal(np.asarray(train.images(32, [6, 0])), pixels[[6, 0]])
    assert images.default_image_size(dataset) == 224


def test_fingerprint_changes_with_the_files(tmp_path):
    root = write_folder(tmp_path / "d", {"train": {"a": 2, "b": 2}})
    before = images.load_folder(root).splits["train"].fingerprint
    assert images.load_folder(root).splits["train"].fingerprint == before
    write_image(root / "train" / "a" / "img00.png", (200, 0, 0), size=(50, 50))
    assert images.load_folder(root).splits["train"].fingerprint != before


def test_load_dataset_picks_folders_by_path(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", {"train": {"a": 2, "b": 2}})
    assert images.load_dataset(root).source == f"folder:{root.resolve()}"
    assert images.load_dataset(f"folder:{root}").source == f"folder:{root.resolve()}"
    monkeypatch.chdir(tmp_path)
    assert images.load_dataset("d").source == f"folder:{root.resolve()}"  # an existing folder wins
    with pytest.raises(FileNotFoundError, match="no such folder"):
        images.load_dataset("./missing")


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder"):
        images.load_folder(tmp_path / "nowhere")
    root = write_folder(tmp_path / "no_train", {"training": {"a": 1}, "test": {"a": 1}})
    with pytest.raises(FileNotFoundError, match=r"no 'train' split folder \(found test, training\)"):
        images.load_folder(root)
    root = write_folder(tmp_path / "empty_class", {"train": {"a": 1}})
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"empty_class/train/b: empty class folder"):
        images.load_folder(root)
    root = write_folder(tmp_path / "differ", {"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}})
    expected = r"split 'test' differ.*only in 'test': \['c'\]; missing from 'test': \['b'\]"
    with pytest.raises(ValueError, match=expected):
        images.load_folder(root)


def test_unreadable_images_are_named(tmp_path):
    root = write_folder(tmp_path / "bad", {"train": {"a": 2}})
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    good = root / "train" / "a" / "img00.png"
    (root / "train" / "a" / "truncated.png").write_bytes(good.read_bytes()[:60])
    split = images.load_folder(root).splits["train"]
    names = [p.name for p in split.items]
    for name in ("broken.png", "truncated.png"):
        with pytest.raises(ValueError, match=rf"{name}: cannot read this image"):
            split.images(32, [names.index(name)])[:]


needs_tfds = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is None, reason="the features extra is not installed"
)


@needs_tfds
def test_tfds_rock_paper_scissors_with_mock_data():
    tfds = images.import_tfds()
    with tfds.testing.mock_data(num_examples=30):
        dataset = images.load_dataset("rock_paper_scissors")
    assert dataset.source == "tfds:rock_paper_scissors" and dataset.name == "rock_paper_scissors"
    assert dataset.class_names == ("rock", "paper", "scissors")
    assert {"train", "test"} <= set(dataset.splits)
    train = dataset.splits["train"]
    assert len(train) == 30 and train.labels.dtype == np.int32 and set(train.labels.tolist()) <= {0, 1, 2}
    assert isinstance(train.items[0], bytes)
    assert train.item_name(3) == "tfds:rock_paper_scissors/train[3]"
    pixels = train.images(32)[0:4]
    assert pixels.shape == (4, 32, 32, 3) and pixels.dtype == np.uint8
    assert images.default_image_size(dataset) == 300
    assert "tfds_version" in dataset.info
    with tfds.testing.mock_data(num_examples=30):
        again = images.load_dataset("tfds:rock_paper_scissors")
    assert again.splits["train"].fingerprint == train.fingerprint


@needs_tfds
def test_importing_tfds_leaves_keras_on_jax():
    # TensorFlow imports Keras when it is installed, and Keras fixes its backend then (by default
    # from ~/.keras/keras.json): a TFDS source must not stop the backbone from running on JAX.
    code = (
        "from evojax_prune.data import images\n"
        "from evojax_prune.io import keras_backend\n"
        "images.import_tfds()\n"
        "print('backend', keras_backend.import_keras().backend.backend())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend jax" in result.stdout


@needs_tfds
def test_unknown_tfds_name_is_one_clear_line():
    with pytest.raises(ValueError) as error:
        images.load_tfds("no_such_data_set_xyz")
    message = str(error.value)
    assert "'no_such_data_set_xyz' is not a TFDS data set" in message and "\n" not in message


# ---------------------------------------------------------------------------
# Resizing and the authors' image sizes


def nearest_reference(pixels: np.ndarray, side: int) -> np.ndarray:
    """Nearest neighbour by pixel centres: output (i, j) samples input (floor((i + .5) H / S), ...)."""
    height, width = pixels.shape[:2]
    rows = np.floor((np.arange(side) + 0.5) * height / side).astype(int)
    cols = np.floor((np.arange(side) + 0.5) * width / side).astype(int)
    return pixels[rows][:, cols]


def test_nearest_resize_is_pillows_nearest_as_keras_used_it(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    path = tmp_path / "d" / "train" / "a" / "img.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path)
    Image.fromarray(pixels[:, :, 0]).save(path.with_name("grey.png"))  # converted to RGB first
    split = images.load_folder(tmp_path / "d").splits["train"]
    for side in (16, 50):  # down and up
        ours = images.decode_image(path, side, "img", resize="nearest")
        with Image.open(path) as image:  # keras_preprocessing load_img: convert, then resize(NEAREST)
            keras_way = np.asarray(image.convert("RGB").resize((side, side), Image.NEAREST))
        np.testing.assert_array_equal(ours, keras_way)
        np.testing.assert_array_equal(ours, nearest_reference(pixels, side))
        grey = nearest_reference(np.repeat(pixels[:, :, :1], 3, axis=2), side)
        decoded = split.images(side, resize="nearest")[0:2]  # grey.png, img.png
        np.testing.assert_array_equal(decoded[0], grey)
        np.testing.assert_array_equal(decoded[1], ours)
        bilinear = images.decode_image(path, side, "img")
        assert not np.array_equal(bilinear, ours)
        np.testing.assert_array_equal(split.images(side)[1:2][0], bilinear)  # bilinear stays the default
    with pytest.raises(ValueError, match="unknown resize method 'cubic'; expected one of bilinear, nearest"):
        split.images(16, resize="cubic")


def test_the_authors_image_sizes_by_name(tmp_path):
    # configs/configDataset*.csv of the authors' repository: height, width columns.
    expected = {"SRSMAS": 299, "LEAVES": 256, "CATARACT": 256, "PAINTING": 256, "PLANTS": 100, "RPS": 300}
    names = {
        "srsmas": "SRSMAS", "Corals": "SRSMAS", "corales": "SRSMAS", "LEAVES": "LEAVES",
        "citrus_leaves": "LEAVES", "citrus-leaves": "LEAVES", "Cataract": "CATARACT",
        "painting": "PAINTING", "Paintings": "PAINTING", "PLANTS": "PLANTS", "rps": "RPS",
        "rock_paper_scissors": "RPS", "Rock Paper Scissors": "RPS",
    }
    for name, paper_name in names.items():
        assert images.authors_dataset(name) == paper_name
        assert images.authors_image_size(name) == expected[paper_name]
    for name in ("ind", "plant", "leaves2", "cifar10"):
        assert images.authors_dataset(name) is None and images.authors_image_size(name) is None
    plants = images.load_folder(write_folder(tmp_path / "Plants", {"train": {"a": 1}}))
    assert images.default_image_size(plants) == 100
    other = images.load_folder(write_folder(tmp_path / "mine", {"train": {"a": 1}}))
    assert images.default_image_size(other) == 224
