"""Image folders and TFDS data sets, the splits and the OoD protocol."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evojax_prune.data import images


def write_image(path: Path, color, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_folder(root: Path, layout: dict[str, dict[str, int]], size=(40, 30)) -> Path:
    """root/split/label/imgNN.png, each image one solid colour that encodes (split, label, number)."""
    for s, (split, classes) in enumerate(sorted(layout.items())):
        for c, (label, count) in enumerate(sorted(classes.items())):
            for k in range(count):
                write_image(root / split / label / f"img{k:02d}.png", (10 * s, 10 * c, k), size)
    return root


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


def test_stratified_holdout_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    kept, held = images.stratified_holdout(labels, 0.2, seed=3)
    assert np.bincount(labels[held]).tolist() == [2, 4, 6]
    assert np.intersect1d(kept, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(60))
    assert np.all(np.diff(held) > 0) and held.dtype == np.int64
    np.testing.assert_array_equal(images.stratified_holdout(labels, 0.2, seed=3)[1], held)
    assert not np.array_equal(images.stratified_holdout(labels, 0.2, seed=4)[1], held)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have a single image"):
        images.stratified_holdout(np.array([0, 0, 1]), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        images.stratified_holdout(labels, 1.0, seed=0)


def test_make_splits_with_and_without_a_test_folder(tmp_path):
    layout = {"train": {"x": 10, "y": 15}, "test": {"x": 3, "y": 4}}
    with_test = images.load_folder(write_folder(tmp_path / "a", layout))
    plan = images.make_splits(with_test, val_fraction=0.2, seed=0)
    (train_split, train), (val_split, val), (test_split, test) = plan.train, plan.val, plan.test
    assert train_split.split == val_split.split == "train" and test_split.split == "test"
    assert len(train) == 20 and len(val) == 5 and len(test) == 7
    assert np.bincount(train_split.labels[val]).tolist() == [2, 3]
    assert np.intersect1d(train, val).size == 0
    assert plan.metadata["val"] == {"from": "train", "fraction": 0.2, "seed": 1, "size": 5}
    assert plan.metadata["test"] == {"from": "test", "size": 7}
    assert plan.metadata["train"]["size"] == 20

    no_test = images.load_folder(write_folder(tmp_path / "b", {"train": {"x": 20, "y": 20}}))
    plan = images.make_splits(no_test, val_fraction=0.25, test_fraction=0.2, seed=5)
    roles = [plan.train[1], plan.val[1], plan.test[1]]
    assert [len(r) for r in roles] == [24, 8, 8]
    np.testing.assert_array_equal(np.sort(np.concatenate(roles)), np.arange(40))  # disjoint, complete
    assert plan.metadata["test"] == {"from": "train", "fraction_of_train": 0.2, "seed": 5, "size": 8}

    layout = {"train": {"x": 4, "y": 4}, "validation": {"x": 1, "y": 2}, "test": {"x": 1, "y": 1}}
    with_val = images.load_folder(write_folder(tmp_path / "c", layout))
    plan = images.make_splits(with_val)
    assert plan.val[0].split == "validation" and len(plan.val[1]) == 3 and len(plan.train[1]) == 8


def test_allocate_evenly():
    assert images.allocate_evenly(10, [5, 5, 5]).tolist() == [4, 3, 3]
    assert images.allocate_evenly(10, [1, 5, 5]).tolist() == [1, 5, 4]
    assert images.allocate_evenly(2, [5, 5, 5]).tolist() == [1, 1, 0]
    assert images.allocate_evenly(0, [0, 3]).tolist() == [0, 0]
    assert images.allocate_evenly(6, [0, 3, 3]).tolist() == [0, 3, 3]
    with pytest.raises(ValueError, match="cannot place 7 items in bins holding 6"):
        images.allocate_evenly(7, [3, 3])


def _chosen(selection_part):
    """{(source, split, label): sorted list of indices}, and all (source, split, index) triples."""
    by_class, triples = {}, set()
    for split, indices in selection_part:
        for index in indices.tolist():
            key = (split.dataset, int(split.labels[index]))
            by_class.setdefault(key, []).append(index)
            triples.add((split.dataset, split.split, index))
    return {k: len(v) for k, v in by_class.items()}, triples


def test_ood_protocol_counts_and_disjointness(tmp_path):
    # A pools train + test: x 6, y 6, z 2 images; B: p 20 images.
    layout = {"train": {"x": 4, "y": 3, "z": 1}, "test": {"x": 2, "y": 3, "z": 1}}
    a = images.load_folder(write_folder(tmp_path / "A", layout))
    b = images.load_folder(write_folder(tmp_path / "B", {"train": {"p": 20}}))
    selection = images.ood_selection(10, [a, b], seed=7)
    # 10 over A (holds 3 + 3 + 1 per set) and B (10): 5 each; A's 5 over x, y, z: 2, 2, 1.
    expected = {(a.source, 0): 2, (a.source, 1): 2, (a.source, 2): 1, (b.source, 0): 5}
    val_counts, val_items = _chosen(selection.val)
    test_counts, test_items = _chosen(selection.test)
    assert val_counts == expected and test_counts == expected
    assert selection.size("val") == selection.size("test") == 10
    assert len(val_items) == len(test_items) == 10  # no image twice within a set
    assert not val_items & test_items  # and none in both
    assert {split for split, _ in selection.val} <= {*a.splits.values(), *b.splits.values()}
    meta = selection.metadata
    assert meta["per_split"] == 10 and meta["seed"] == 7 and meta["disjoint"] is True
    assert meta["sources"][0] == {"source": a.source, "per_split": 5, "per_class": {"x": 2, "y": 2, "z": 1}}
    assert meta["sources"][1]["per_class"] == {"p": 5}

    again = images.ood_selection(10, [a, b], seed=7)
    assert _chosen(again.val)[1] == val_items and _chosen(again.test)[1] == test_items
    other = images.ood_selection(10, [a, b], seed=8)
    assert _chosen(other.val)[1] != val_items

    # An odd total: the remainder goes to the first data set, then its first class.
    odd = images.ood_selection(7, [a, b], seed=0)
    assert _chosen(odd.val)[0] == {(a.source, 0): 2, (a.source, 1): 1, (a.source, 2): 1, (b.source, 0): 3}

    with pytest.raises(ValueError, match="can give at most 17 images"):
        images.ood_selection(18, [a, b], seed=0)
    with pytest.raises(ValueError, match="at least one"):
        images.ood_selection(3, [], seed=0)


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
        "from evojax_prune.data import backbone, images\n"
        "images.import_tfds()\n"
        "print('backend', backbone.import_keras().backend.backend())\n"
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
