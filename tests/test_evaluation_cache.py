import numpy as np

from evojax_prune.evaluation_cache import METRIC_NAMES, MaskCache, pack_masks


def test_pack_masks_distinguishes_every_bit():
    masks = np.eye(13, dtype=bool)
    assert len(set(pack_masks(masks).tolist())) == 13
    assert pack_masks(masks[:1])[0] == pack_masks(masks[:1].copy())[0]


def test_lookup_insert_and_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((40, 21)) < 0.5
    values = rng.random((40, len(METRIC_NAMES)))
    cache = MaskCache(21)
    found, looked_up = cache.lookup(masks)
    assert not found.any() and np.isnan(looked_up).all()
    cache.insert(masks[:25], values[:25])
    found, looked_up = cache.lookup(masks)
    np.testing.assert_array_equal(found, np.arange(40) < 25)
    np.testing.assert_array_equal(looked_up[:25], values[:25])
    # Re-inserting a known mask keeps the first value: objectives never change.
    cache.insert(masks[20:], values[20:] + 1.0)
    found, looked_up = cache.lookup(masks)
    assert found.all() and len(cache) == 40
    np.testing.assert_array_equal(looked_up[:25], values[:25])
    np.testing.assert_array_equal(looked_up[25:], values[25:] + 1.0)
    restored = MaskCache.from_state_dict(21, cache.state_dict())
    np.testing.assert_array_equal(restored.lookup(masks)[1], looked_up)
