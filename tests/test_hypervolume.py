import numpy as np
import pytest
from pymoo.indicators.hv import HV

from evojax_prune.search.hypervolume import hypervolume


def test_known_fronts():
    assert hypervolume(np.array([[0.5, 0.5, 0.5]]), (1, 1, 1)) == pytest.approx(0.125)
    # Two boxes 0.5^3 and (0.8 x 0.2 x 0.1) overlapping in 0.5 x 0.2 x 0.1.
    front = np.array([[0.5, 0.5, 0.5], [0.2, 0.8, 0.9]])
    assert hypervolume(front, (1, 1, 1)) == pytest.approx(0.125 + 0.8 * 0.2 * 0.1 - 0.5 * 0.2 * 0.1)
    assert hypervolume(np.zeros((0, 3)), (1, 1, 1)) == 0.0
    # A point outside the reference box adds nothing.
    assert hypervolume(np.array([[0.5, 0.5, 0.5], [0.1, 1.2, 0.1]]), (1, 1, 1)) == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(3))
def test_matches_pymoo_on_random_fronts(seed):
    points = np.random.default_rng(seed).random((40, 3))
    assert hypervolume(points, (1, 1, 1)) == pytest.approx(HV(ref_point=np.ones(3))(points))


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"must be \(K, 3\)"):
        hypervolume(np.zeros((4, 2)), (1, 1, 1))
