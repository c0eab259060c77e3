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


# ---------------------------------------------------------------------------
# The authors' own OoD rule (order="folder"), against a transliteration of their code


def authors_counts(total, parts):
    """main.py (over the OoD data sets) and utility.read_dataset_ood (over classes), as written."""
    counts = [total // parts] * parts
    for i in range(total % parts):
        counts[i] += 1
    return counts


def authors_process_ood_data(labels, num_ejemplos):
    """fitness._process_ood_data, line by line, over integer labels instead of one-hot rows."""
    chosen_idx = []
    ref = labels[0]
    actual = 0
    copy_ejemplos = list(num_ejemplos)
    for position, label in enumerate(labels):
        if label == ref and copy_ejemplos[actual] > 0:
            chosen_idx.append(position)
            copy_ejemplos[actual] -= 1
        elif label != ref:
            actual += 1
            ref = label
            chosen_idx.append(position)
            copy_ejemplos[actual] -= 1
    return chosen_idx


def keras_folder_order(train_dir: Path):
    """flow_from_directory(shuffle=False): class folders by sorted name, files by sorted name."""
    paths, labels = [], []
    classes = sorted(name for name in os.listdir(train_dir) if (train_dir / name).is_dir())
    for label, name in enumerate(classes):
        for file_name in sorted(os.listdir(train_dir / name)):
            if file_name.lower().endswith((".png", ".jpg", ".jpeg")):
                paths.append((train_dir / name / file_name).resolve())
                labels.append(label)
    return paths, labels


def write_named(root: Path, classes: dict[str, list[str]], split="train"):
    # Written in the listed order, which is not the sorted one: the order must come from the names.
    for c, (label, names) in enumerate(classes.items()):
        for k, name in enumerate(names):
            write_image(root / split / label / name, (c, k, 7), size=(8, 6))
    return images.load_folder(root)


def test_split_with_remainder_is_the_authors_rule_and_allocate_evenly_without_caps():
    for total in (0, 1, 5, 76, 856):
        for parts in (1, 3, 5, 27):
            expected = authors_counts(total, parts)
            assert images.split_with_remainder(total, parts).tolist() == expected
            assert images.allocate_evenly(total, [total] * parts).tolist() == expected
    # With capacities the two part: allocate_evenly moves what a bin cannot hold to the others.
    assert images.allocate_evenly(6, [1, 10, 10]).tolist() == [1, 3, 2]
    assert images.split_with_remainder(6, 3).tolist() == [2, 2, 2]


def test_folder_order_is_the_authors_selection(tmp_path):
    names = ["b10.png", "B2.png", "a.png", "b9.png", "_x.png", "c.png"]  # sorted: B2 _x a b10 b9 c
    a = write_named(tmp_path / "A", {"cat": names[:5], "ant": ["z.png"], "bee": names[2:6], "dog": names})
    write_image(tmp_path / "A" / "test" / "ant" / "t.png", (1, 1, 1))  # another split: never used
    b = write_named(tmp_path / "B", {f"c{k}": ["p.png", "o.png"] for k in range(7)})
    c = write_named(tmp_path / "C", {label: ["1.png", "2.png"] for label in ("x", "y", "z")})

    def check(total, datasets):
        selection = images.ood_selection(total, datasets, seed=123, order="folder")
        chosen_test = {}
        for (split, test_idx), (val_split, val_idx), share in zip(
            selection.test, selection.val, authors_counts(total, len(datasets)), strict=True
        ):
            assert split is val_split and split.split == "train"
            root = Path(split.dataset.removeprefix("folder:"))
            paths, labels = keras_folder_order(root / "train")
            expected = authors_process_ood_data(labels, authors_counts(share, len(set(labels))))
            assert [split.items[i] for i in test_idx] == [paths[p] for p in expected]
            # Validation: per class, the next as many images as the test set took, as far as they go.
            expected_val = []
            for label in sorted(set(labels)):
                members = [p for p, lab in enumerate(labels) if lab == label]
                took = sum(labels[p] == label for p in expected)
                expected_val += members[took:2 * took]
            assert [split.items[i] for i in val_idx] == [paths[p] for p in expected_val]
            chosen_test[split.dataset] = len(test_idx)
        return selection, chosen_test

    # 11 over A, B: 6, 5. A's 6 over ant, bee, cat, dog: 2, 2, 1, 1 (ant has one image). B's 5 over
    # 7 classes: 1 x 5, then two zero counts that still give their first image.
    selection, sizes = check(11, [a, b])
    assert sizes == {a.source: 5, b.source: 7}
    meta = selection.metadata
    assert meta["order"] == "folder" and meta["per_split"] == 11 and meta["disjoint"] is True
    assert meta["sizes"] == {"test": 12, "val": 11}
    assert meta["sources"][0]["per_class"] == {"ant": 2, "bee": 2, "cat": 1, "dog": 1}
    assert meta["sources"][0]["test_per_class"] == {"ant": 1, "bee": 2, "cat": 1, "dog": 1}
    assert meta["sources"][0]["val_per_class"] == {"ant": 0, "bee": 2, "cat": 1, "dog": 1}
    assert meta["sources"][1]["per_class"] == {f"c{k}": int(k < 5) for k in range(7)}
    assert meta["sources"][1]["test_per_class"] == {f"c{k}": 1 for k in range(7)}
    assert meta["short"] == [f"{a.source} class 'ant': 1 image(s) for 2 test and 2 validation"]

    # 2 over A, B, C: 1, 1, 0. C's first class gives nothing, its others one each (the quirk).
    selection, sizes = check(2, [a, b, c])
    assert sizes == {a.source: 4, b.source: 7, c.source: 2}
    assert selection.metadata["sources"][2]["test_per_class"] == {"x": 0, "y": 1, "z": 1}

    # The random order is untouched by all this.
    assert images.ood_selection(4, [b, c], seed=0).metadata["order"] == "random"
    with pytest.raises(ValueError, match="unknown OoD order 'sideways'; expected one of random, folder"):
        images.ood_selection(4, [b, c], order="sideways")
    lonely = write_named(tmp_path / "D", {"only": ["1.png"]})
    with pytest.raises(ValueError, match="no OoD image is left for validation"):
        images.ood_selection(1, [lonely], order="folder")


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
