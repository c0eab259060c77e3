"""The embedded default data set: runs with no download, for demos, tests and CI.

In-distribution: scikit-learn's copy of the UCI handwritten digits (1,797 images,
8x8, 17 grey levels 0..16, 10 classes). Out-of-distribution: 8x8 grey patches
cut from the two photographs scikit-learn bundles (``china.jpg``,
``flower.jpg``), reduced and quantised the way the digits were (the UCI digits
are 32x32 bitmaps counted in 4x4 blocks; here 24x24 photo patches are averaged
in 3x3 blocks and quantised to 0..16).

The "features" are the 64 pixel values scaled to [0, 1], not ResNet-50
features: a stand-in with the same shape of problem (D features, C classes,
OoD data), small enough for a CPU.
"""

from __future__ import annotations

import numpy as np

from evojax_prune.data.featureset import FeatureSet

_PATCH = 24  # photo pixels per patch side, reduced 3x3 to the digits' 8x8
_LEVELS = 16  # the digits' grey levels run 0..16
_MIN_LEVELS = 4  # fewer distinct grey levels than this: a flat patch


def digits(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> FeatureSet:
    """The embedded default FeatureSet.

    Args:
      seed: seeds the stratified split and the choice of OoD patches.
      val_fraction, test_fraction: shares of the 1,797 digits held out for
        validation and test (stratified by class).

    Returns:
      A FeatureSet with D = 64 features in [0, 1] and C = 10 classes; the OoD
      validation and test sets are pixel-disjoint sets of photo patches, each as large
      as the in-distribution test split (the authors' protocol), half from each
      photograph.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be in (0, 1) with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    bunch = load_digits()
    x = (bunch.data / _LEVELS).astype(np.float32)
    y = bunch.target.astype(np.int32)
    indices = np.arange(len(y))
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest], random_state=seed + 1
    )
    ood_val, ood_test = photo_patches(len(test), seed=seed)
    return FeatureSet(
        x_train=x[train], y_train=y[train],
        x_val=x[val], y_val=y[val],
        x_test=x[test], y_test=y[test],
        ood_val=ood_val, ood_test=ood_test,
        class_names=tuple(str(label) for label in bunch.target_names),
        metadata={
            "name": "digits",
            "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            "feature_extractor": "none: 8x8 pixel values / 16",
            "image_size": 8,
            "splits": {
                "method": "stratified, sklearn.model_selection.train_test_split",
                "seed": seed,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
            },
            "ood": {
                "source": "sklearn.datasets.load_sample_images (china.jpg, flower.jpg)",
                "method": (
                f"{_PATCH}x{_PATCH} grey patches (stride {_PATCH // 2}, at least {_MIN_LEVELS} grey "
                "levels), 3x3 block mean, quantised to 0..16, / 16; validation from the left half "
                "of each photo, test from the right half"
            ),
                "per_split": len(test),
                "disjoint": True,
            },
        },
    )


def photo_patches(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two pixel-disjoint sets of ``count`` digit-like patches, (count, 64) float32 each.

    Each photograph contributes half of each set: validation patches come from
    its left half, test patches from its right half, so no photo pixel is in
    both. Patches are drawn without replacement from a grid with stride
    ``_PATCH / 2``; near-flat patches (sky, dark background: fewer than
    ``_MIN_LEVELS`` grey levels) are skipped, since they quantise to copies of
    one another.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    shares = [(count + 1) // 2, count // 2]
    val_parts, test_parts = [], []
    for photo, share in zip(load_sample_images().images, shares, strict=True):
        middle = photo.shape[1] // 2
        for half, parts in ((photo[:, :middle], val_parts), (photo[:, middle:], test_parts)):
            patches = _textured_patches(half)
            if share > len(patches):
                raise ValueError(f"asked for {share} patches from a photo region that has {len(patches)}")
            parts.append(patches[rng.permutation(len(patches))[:share]])
    return np.concatenate(val_parts), np.concatenate(test_parts)


def _textured_patches(photo: np.ndarray) -> np.ndarray:
    grey = photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma
    stride = _PATCH // 2
    windows = np.lib.stride_tricks.sliding_window_view(grey, (_PATCH, _PATCH))[::stride, ::stride]
    windows = windows.reshape(-1, 8, 3, 8, 3).mean(axis=(2, 4))
    levels = np.rint(windows / 255.0 * _LEVELS).reshape(-1, 64)
    textured = np.array([len(np.unique(row)) >= _MIN_LEVELS for row in levels])
    return (levels[textured] / _LEVELS).astype(np.float32)
