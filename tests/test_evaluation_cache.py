import jax.numpy as jnp
import numpy as np

from evojax_prune.result import METRIC_NAMES
from evojax_prune.search.evaluation_cache import MaskCache, TrainedHeads, pack_masks


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


def test_trained_heads_stack_retain_and_missing():
    rng = np.random.default_rng(1)
    masks = np.unique(rng.random((30, 12)) < 0.5, axis=0)[:12]
    # Two training calls, each returning padded stacks (rows past the masks are padding).
    weights = rng.normal(size=(12, 3, 2)).astype(np.float32)
    first = {"w": jnp.asarray(np.concatenate([weights[:5], np.zeros((3, 3, 2), np.float32)])),
             "epochs": jnp.arange(8)}
    second = {"w": jnp.asarray(weights[5:]), "epochs": jnp.arange(5, 12)}
    heads = TrainedHeads()
    heads.add(masks[:5], first)
    heads.add(masks[5:], second)
    # A mask already held keeps its first head.
    heads.add(masks[:1], {"w": jnp.full((1, 3, 2), 99.0), "epochs": jnp.array([99])})
    assert len(heads) == 12

    asked = masks[[7, 2, 11, 2, 0]]  # rows from both stacks, out of order, one twice
    stacked = heads.stack(asked)
    np.testing.assert_array_equal(stacked["w"], weights[[7, 2, 11, 2, 0]])
    np.testing.assert_array_equal(stacked["epochs"], [7, 2, 11, 2, 0])

    unknown = ~masks[:2]  # complements: not held
    np.testing.assert_array_equal(heads.missing(np.concatenate([masks[:3], unknown])), [0, 0, 0, 1, 1])
    # Retaining keeps exactly the held masks asked for (unknown ones ignored, duplicates once).
    heads.retain(np.concatenate([masks[[9, 3, 3]], unknown]))
    assert len(heads) == 2
    np.testing.assert_array_equal(heads.missing(masks), ~np.isin(np.arange(12), [3, 9]))
    np.testing.assert_array_equal(heads.stack(masks[[3, 9]])["w"], weights[[3, 9]])
    heads.retain(unknown)
    assert len(heads) == 0 and heads.missing(masks).all()
