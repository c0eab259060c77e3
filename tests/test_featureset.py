import dataclasses
import json

import numpy as np
import pytest

from evojax_prune.data.featureset import FeatureSet, FeatureSetError


def small_featureset(**changes):
    rng = np.random.default_rng(0)
    fields = dict(
        x_train=rng.normal(size=(12, 5)).astype(np.float32),
        y_train=np.arange(12, dtype=np.int32) % 3,
        x_val=rng.normal(size=(6, 5)).astype(np.float32),
        y_val=np.arange(6, dtype=np.int32) % 3,
        x_test=rng.normal(size=(6, 5)).astype(np.float32),
        y_test=np.arange(6, dtype=np.int32) % 3,
        ood_val=rng.normal(size=(4, 5)).astype(np.float32),
        ood_test=rng.normal(size=(4, 5)).astype(np.float32),
        class_names=("a", "b", "c"),
        metadata={"name": "small", "image_size": 32, "splits": {"seed": 3}},
    )
    fields.update(changes)
    return fields


def test_save_then_load_round_trips_arrays_and_metadata(tmp_path):
    original = FeatureSet(**small_featureset())
    path = original.save(tmp_path / "small.npz")
    loaded = FeatureSet.load(path)
    for name, array in original.arrays().items():
        np.testing.assert_array_equal(loaded.arrays()[name], array)
        assert loaded.arrays()[name].dtype == array.dtype
    assert loaded.class_names == original.class_names
    assert loaded.metadata == original.metadata
    assert "small" in repr(loaded) and "D=5" in repr(loaded)


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    path = tmp_path / "fs.npz"
    FeatureSet(**small_featureset()).save(path)
    FeatureSet(**small_featureset(metadata={"name": "second"})).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fs.npz"]
    assert FeatureSet.load(path).name == "second"


def test_save_into_a_missing_directory_names_it(tmp_path):
    with pytest.raises(FeatureSetError, match="does not exist"):
        FeatureSet(**small_featureset()).save(tmp_path / "nope" / "fs.npz")


def _rewrite(path, **overrides):
    """Saves a valid file, then rewrites some of its arrays behind FeatureSet's back."""
    FeatureSet(**small_featureset()).save(path)
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    contents.update(overrides)
    for name in [name for name, value in overrides.items() if value is None]:
        del contents[name]
    np.savez(path, **contents)
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"x_val": np.full((6, 5), np.nan, np.float32)}, "x_val has 30 non-finite values"),
        ({"ood_test": np.array([[np.inf] * 5] * 4, np.float32)}, "ood_test has 20 non-finite"),
        ({"x_test": np.zeros((6, 7), np.float32)}, "feature width differs.*x_train has 5.*x_test has 7"),
        ({"y_val": np.array([0, 1, 2, 3, 0, 1], np.int32)}, r"y_val has labels outside \[0, 3\): \[3\]"),
        ({"y_train": np.array([-1] + [0, 1, 2] * 3 + [0, 1], np.int32)}, "y_train has labels outside"),
        ({"y_train": np.arange(12, dtype=np.int32) % 2}, r"class\(es\) missing from train: \['c'\]"),
        ({"x_train": np.zeros((0, 5), np.float32), "y_train": np.zeros((0,), np.int32)}, "x_train is empty"),
        ({"ood_val": np.zeros((0, 5), np.float32)}, "ood_val is empty"),
        ({"x_train": np.zeros((12, 5), np.int64)}, "x_train must hold floating-point.*int64"),
        ({"y_test": np.zeros((6,), np.float32)}, "y_test must hold integer labels.*float32"),
        ({"y_test": np.zeros((5,), np.int32)}, r"y_test must have shape \(6,\)"),
        ({"x_val": np.zeros((6,), np.float32)}, "x_val must be 2-D"),
        ({"ood_test": None}, r"missing array\(s\) \['ood_test'\]"),
        ({"format_version": np.asarray(99)}, "format version 99 is not supported"),
        ({"format": np.asarray("something else")}, "not a FeatureSet file"),
        ({"metadata_json": np.asarray("{oops")}, "metadata is not valid JSON"),
    ],
)
def test_load_names_each_problem(tmp_path, overrides, message):
    path = _rewrite(tmp_path / "bad.npz", **overrides)
    with pytest.raises(FeatureSetError, match=message) as error:
        FeatureSet.load(path)
    assert "bad.npz" in str(error.value)


def test_load_rejects_files_that_are_not_featuresets(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(FeatureSetError, match=r"not a FeatureSet \.npz file"):
        FeatureSet.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(FeatureSetError, match=r"not a FeatureSet file \(no 'format' entry"):
        FeatureSet.load(other)
    with pytest.raises(FeatureSetError, match="no such file"):
        FeatureSet.load(tmp_path / "absent.npz")
    with pytest.raises(FeatureSetError, match="is a directory"):
        FeatureSet.load(tmp_path)


def test_construction_validates_too():
    with pytest.raises(FeatureSetError, match="x_train has 1 non-finite"):
        bad = small_featureset()["x_train"].copy()
        bad[0, 0] = np.nan
        FeatureSet(**small_featureset(x_train=bad))
    with pytest.raises(FeatureSetError, match="metadata must be JSON-serialisable"):
        FeatureSet(**small_featureset(metadata={"when": object()}))


def test_featureset_is_immutable():
    featureset = FeatureSet(**small_featureset())
    with pytest.raises(dataclasses.FrozenInstanceError):
        featureset.class_names = ("x",)
    json.dumps(featureset.metadata)


def test_a_featureset_of_one_class_is_valid_but_refused_by_name_at_the_start_of_a_search(tmp_path):
    """Issue 33 (4): one class ran to a front of one member, accuracy 1.0, AUROC 0.5, without a word."""
    from evojax_prune.config import preset
    from evojax_prune.search.loop import run_search, run_searches

    fields = small_featureset(y_train=np.zeros(12, np.int32), y_val=np.zeros(6, np.int32),
                              y_test=np.zeros(6, np.int32), class_names=("only",))
    single = FeatureSet(**fields)  # a valid FeatureSet: inspect prints it
    assert FeatureSet.load(single.save(tmp_path / "single.npz")).num_classes == 1
    message = "FeatureSet 'small': has 1 class; the search needs at least 2"
    assert single.search_problem().startswith(message)
    assert FeatureSet(**small_featureset()).search_problem() is None
    config = preset("quick").replace(search={"population_size": 4, "generations": 1})
    with pytest.raises(FeatureSetError, match=message):
        run_search(single, config, out_dir=tmp_path / "run")
    with pytest.raises(FeatureSetError, match=message):
        run_search([single, single], config)
    with pytest.raises(FeatureSetError, match=message):
        run_searches(single, config, runs=2, out_dir=tmp_path / "runs")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
