"""The in-distribution splits of an image data set: stratified hold-outs and the split plan."""

import numpy as np
import pytest
from image_folders import write_folder

from evojax_prune.data import images, splits


def test_stratified_holdout_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    kept, held = splits.stratified_holdout(labels, 0.2, seed=3)
    assert np.bincount(labels[held]).tolist() == [2, 4, 6]
    assert np.intersect1d(kept, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(60))
    assert np.all(np.diff(held) > 0) and held.dtype == np.int64
    np.testing.assert_array_equal(splits.stratified_holdout(labels, 0.2, seed=3)[1], held)
    assert not np.array_equal(splits.stratified_holdout(labels, 0.2, seed=4)[1], held)
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have a single image"):
        splits.stratified_holdout(np.array([0, 0, 1]), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        splits.stratified_holdout(labels, 1.0, seed=0)


def test_make_splits_with_and_without_a_test_folder(tmp_path):
    layout = {"train": {"x": 10, "y": 15}, "test": {"x": 3, "y": 4}}
    with_test = images.load_folder(write_folder(tmp_path / "a", layout))
    plan = splits.make_splits(with_test, val_fraction=0.2, seed=0)
    (train_split, train), (val_split, val), (test_split, test) = plan.train, plan.val, plan.test
    assert train_split.split == val_split.split == "train" and test_split.split == "test"
    assert len(train) == 20 and len(val) == 5 and len(test) == 7
    assert np.bincount(train_split.labels[val]).tolist() == [2, 3]
    assert np.intersect1d(train, val).size == 0
    assert plan.metadata["val"] == {"from": "train", "fraction": 0.2, "seed": 1, "size": 5}
    assert plan.metadata["test"] == {"from": "test", "size": 7}
    assert plan.metadata["train"]["size"] == 20

    no_test = images.load_folder(write_folder(tmp_path / "b", {"train": {"x": 20, "y": 20}}))
    plan = splits.make_splits(no_test, val_fraction=0.25, test_fraction=0.2, seed=5)
    roles = [plan.train[1], plan.val[1], plan.test[1]]
    assert [len(r) for r in roles] == [24, 8, 8]
    np.testing.assert_array_equal(np.sort(np.concatenate(roles)), np.arange(40))  # disjoint, complete
    assert plan.metadata["test"] == {"from": "train", "fraction_of_train": 0.2, "seed": 5, "size": 8}

    layout = {"train": {"x": 4, "y": 4}, "validation": {"x": 1, "y": 2}, "test": {"x": 1, "y": 1}}
    with_val = images.load_folder(write_folder(tmp_path / "c", layout))
    plan = splits.make_splits(with_val)
    assert plan.val[0].split == "validation" and len(plan.val[1]) == 3 and len(plan.train[1]) == 8
