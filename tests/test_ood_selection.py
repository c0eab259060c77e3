"""The OoD sets: even allocation, the seeded draw, and the authors' folder order against their code."""

import os
from pathlib import Path

import pytest
from image_folders import write_folder, write_image

from evojax_prune.data import images, ood_selection


def test_allocate_evenly():
    assert ood_selection.allocate_evenly(10, [5, 5, 5]).tolist() == [4, 3, 3]
    assert ood_selection.allocate_evenly(10, [1, 5, 5]).tolist() == [1, 5, 4]
    assert ood_selection.allocate_evenly(2, [5, 5, 5]).tolist() == [1, 1, 0]
    assert ood_selection.allocate_evenly(0, [0, 3]).tolist() == [0, 0]
    assert ood_selection.allocate_evenly(6, [0, 3, 3]).tolist() == [0, 3, 3]
    with pytest.raises(ValueError, match="cannot place 7 items in bins holding 6"):
        ood_selection.allocate_evenly(7, [3, 3])


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
    selection = ood_selection.ood_selection(10, [a, b], seed=7)
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

    again = ood_selection.ood_selection(10, [a, b], seed=7)
    assert _chosen(again.val)[1] == val_items and _chosen(again.test)[1] == test_items
    other = ood_selection.ood_selection(10, [a, b], seed=8)
    assert _chosen(other.val)[1] != val_items

    # An odd total: the remainder goes to the first data set, then its first class.
    odd = ood_selection.ood_selection(7, [a, b], seed=0)
    assert _chosen(odd.val)[0] == {(a.source, 0): 2, (a.source, 1): 1, (a.source, 2): 1, (b.source, 0): 3}

    with pytest.raises(ValueError, match="can give at most 17 images"):
        ood_selection.ood_selection(18, [a, b], seed=0)
    with pytest.raises(ValueError, match="at least one"):
        ood_selection.ood_selection(3, [], seed=0)


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
            assert ood_selection.split_with_remainder(total, parts).tolist() == expected
            assert ood_selection.allocate_evenly(total, [total] * parts).tolist() == expected
    # With capacities the two part: allocate_evenly moves what a bin cannot hold to the others.
    assert ood_selection.allocate_evenly(6, [1, 10, 10]).tolist() == [1, 3, 2]
    assert ood_selection.split_with_remainder(6, 3).tolist() == [2, 2, 2]


def test_folder_order_is_the_authors_selection(tmp_path):
    names = ["b10.png", "B2.png", "a.png", "b9.png", "_x.png", "c.png"]  # sorted: B2 _x a b10 b9 c
    a = write_named(tmp_path / "A", {"cat": names[:5], "ant": ["z.png"], "bee": names[2:6], "dog": names})
    write_image(tmp_path / "A" / "test" / "ant" / "t.png", (1, 1, 1))  # another split: never used
    b = write_named(tmp_path / "B", {f"c{k}": ["p.png", "o.png"] for k in range(7)})
    c = write_named(tmp_path / "C", {label: ["1.png", "2.png"] for label in ("x", "y", "z")})

    def check(total, datasets):
        selection = ood_selection.ood_selection(total, datasets, seed=123, order="folder")
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
    assert ood_selection.ood_selection(4, [b, c], seed=0).metadata["order"] == "random"
    with pytest.raises(ValueError, match="unknown OoD order 'sideways'; expected one of random, folder"):
        ood_selection.ood_selection(4, [b, c], order="sideways")
    lonely = write_named(tmp_path / "D", {"only": ["1.png"]})
    with pytest.raises(ValueError, match="no OoD image is left for validation"):
        ood_selection.ood_selection(1, [lonely], order="folder")
