import numpy as np

from evojax_prune.data import embedded


def test_digits_splits_are_stratified_disjoint_and_complete():
    featureset = embedded.digits()
    sizes = [featureset.x_train.shape[0], featureset.x_val.shape[0], featureset.x_test.shape[0]]
    assert sum(sizes) == 1797
    assert featureset.num_features == 64 and featureset.num_classes == 10
    rows = np.concatenate([featureset.x_train, featureset.x_val, featureset.x_test])
    # Together the splits are exactly the 1,797 digits: no image lost or repeated.
    from sklearn.datasets import load_digits

    original = (load_digits().data / 16).astype(np.float32)
    np.testing.assert_array_equal(
        np.sort(rows.view(np.dtype((np.void, rows.dtype.itemsize * 64))).ravel()),
        np.sort(original.view(np.dtype((np.void, original.dtype.itemsize * 64))).ravel()),
    )
    for labels in (featureset.y_train, featureset.y_val, featureset.y_test):
        shares = np.bincount(labels, minlength=10) / len(labels)
        assert np.all(np.abs(shares - 0.1) < 0.02)
    assert 0.0 <= rows.min() and rows.max() <= 1.0


def test_digits_ood_sets_match_the_test_size_and_are_disjoint():
    featureset = embedded.digits()
    assert featureset.ood_val.shape == featureset.ood_test.shape == (featureset.x_test.shape[0], 64)
    val_rows = {row.tobytes() for row in featureset.ood_val}
    overlap = sum(row.tobytes() in val_rows for row in featureset.ood_test)
    # Distinct patches could still quantise to the same 8x8 picture; flat ones
    # are skipped so that this stays rare.
    assert overlap <= 2
    assert len({row.tobytes() for row in featureset.ood_test}) >= 0.97 * len(featureset.ood_test)
    # Quantised to the digits' 17 grey levels.
    assert np.allclose(featureset.ood_val * 16, np.rint(featureset.ood_val * 16))


def test_digits_is_deterministic_per_seed():
    first, again, other = embedded.digits(seed=0), embedded.digits(seed=0), embedded.digits(seed=1)
    for name, array in first.arrays().items():
        np.testing.assert_array_equal(array, again.arrays()[name])
    assert not np.array_equal(first.y_train, other.y_train)
    assert first.metadata["splits"]["seed"] == 0
