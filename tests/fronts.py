"""Assertions shared by the tests that compare two searches' fronts bit for bit."""

from pathlib import Path

import jax
import numpy as np

from evojax_prune.run import search_result


def assert_same_result(ours, theirs) -> None:
    """Two SearchResults hold the same front: masks, every validation and test metric, every weight."""
    np.testing.assert_array_equal(ours.masks, theirs.masks)
    for split in ("validation", "test"):
        for name, values in getattr(theirs, split).items():
            np.testing.assert_array_equal(getattr(ours, split)[name], values, err_msg=f"{split} {name}")
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params), strict=True):
        np.testing.assert_array_equal(a, b)


def assert_same_front(found: Path, expected: Path) -> None:
    """The two run directories hold the same front, bit for bit (not the wall times)."""
    ours, _ = search_result.read_run(found)
    theirs, _ = search_result.read_run(expected)
    assert_same_result(ours, theirs)
    assert [row["hypervolume"] for row in ours.history] == [row["hypervolume"] for row in theirs.history]
    assert ours.evaluations == theirs.evaluations
