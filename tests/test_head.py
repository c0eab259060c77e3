"""The masked head: shapes, the empty mask, and that a pruned feature has no influence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_prune import head

D, H, C, N = 10, 6, 4, 7


def _params_and_x(seed=0):
    key_params, key_x = jax.random.split(jax.random.key(seed))
    params = head.init(key_params, D, C, H)
    # A nonzero bias, so that "bias only" is distinguishable from "all zeros".
    params = params.replace(output_bias=jnp.arange(C, dtype=jnp.float32) * 0.1)
    return params, jax.random.normal(key_x, (N, D))


def test_init_shapes_and_keras_defaults():
    params = head.init(jax.random.key(0), D, C, H)
    assert params.hidden_kernel.shape == (D, H)
    assert params.output_kernel.shape == (H, C)
    assert params.output_bias.shape == (C,)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    np.testing.assert_array_equal(params.output_bias, 0.0)
    limit = np.sqrt(6.0 / (D + H))  # Glorot-uniform bound
    assert float(jnp.max(jnp.abs(params.hidden_kernel))) <= limit
    assert float(jnp.std(params.hidden_kernel)) > 0.2 * limit


def test_apply_shapes():
    params, x = _params_and_x()
    mask = jnp.ones((D,), bool)
    assert head.apply(params, mask, x).shape == (N, C)
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf, leaf]), params)
    masks = jnp.ones((3, D), bool)
    assert head.apply_population(stacked, masks, x).shape == (3, N, C)


def test_all_zero_mask_predicts_from_the_bias_alone():
    params, x = _params_and_x()
    logits = head.apply(params, jnp.zeros((D,), bool), x)
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(logits, jnp.broadcast_to(params.output_bias, (N, C)), atol=0)


def test_masked_feature_has_no_influence_and_kept_feature_does():
    params, x = _params_and_x()
    mask = jnp.arange(D) % 2 == 0  # keep even features
    base = head.apply(params, mask, x)
    pruned_changed = x.at[:, 1].add(100.0).at[:, 7].set(-50.0)
    np.testing.assert_array_equal(head.apply(params, mask, pruned_changed), base)
    # The same holds for the pruned rows of the kernel: they may hold anything.
    garbage_rows = params.replace(hidden_kernel=params.hidden_kernel.at[1::2].set(1e6))
    np.testing.assert_allclose(head.apply(garbage_rows, mask, x), base, rtol=1e-6)
    kept_changed = x.at[:, 2].add(100.0)
    assert float(jnp.max(jnp.abs(head.apply(params, mask, kept_changed) - base))) > 1e-3


def test_apply_population_equals_one_head_at_a_time():
    rng = np.random.default_rng(1)
    stacked = head.HeadParams(
        hidden_kernel=jnp.asarray(rng.normal(size=(3, D, H)), jnp.float32),
        output_kernel=jnp.asarray(rng.normal(size=(3, H, C)), jnp.float32),
        output_bias=jnp.asarray(rng.normal(size=(3, C)), jnp.float32),
    )
    masks = jnp.asarray(rng.random((3, D)) < 0.5)
    x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    together = jax.jit(head.apply_population)(stacked, masks, x)
    assert together.shape == (3, N, C)
    for i in range(3):
        one = jax.tree.map(lambda leaf, i=i: leaf[i], stacked)
        np.testing.assert_allclose(together[i], jax.jit(head.apply)(one, masks[i], x), rtol=1e-5, atol=1e-5)


def test_param_bytes_counts_the_arrays_init_makes():
    for features, classes, hidden in ((D, C, H), (2048, 3, 512), (64, 27, 1)):
        params = head.init(jax.random.key(0), features, classes, hidden)
        made = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
        assert head.param_bytes(features, classes, hidden) == made


def test_apply_is_the_output_layer_on_the_last_hidden_layer():
    params, x = _params_and_x(3)
    mask = jnp.arange(D) % 3 != 0
    hidden = head.last_hidden(params, mask, x)
    assert hidden.shape == (N, H) and float(jnp.min(hidden)) >= 0.0
    expected = np.maximum((np.asarray(x) * np.asarray(mask)) @ np.asarray(params.hidden_kernel), 0)
    np.testing.assert_allclose(hidden, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(head.apply(params, mask, x), head.output(params, hidden))


@pytest.mark.parametrize("prune, hidden_layers", [("features", 1), ("hidden1", 1), ("features", 2),
                                                  ("hidden2", 2), ("both", 2)])
def test_a_compact_head_holds_only_kept_units_and_gives_the_masked_heads_logits(prune, hidden_layers):
    params = head.init(jax.random.key(3), D, C, H, hidden_layers)
    params = params.replace(output_bias=jnp.arange(C, dtype=jnp.float32) * 0.1)
    length = {"features": D, "hidden1": H, "hidden2": H, "both": 2 * H}[prune]
    mask = np.random.default_rng(1).random(length) < 0.6
    x = jax.random.normal(jax.random.key(4), (N, D))
    compact = head.compact(params, mask, prune)
    np.testing.assert_allclose(compact.logits(x), head.apply(params, mask, x, prune), rtol=1e-5, atol=1e-6)
    features, first, second = head.unit_masks(mask, prune, H)
    kept_features = D if features is None else int(features.sum())
    kept_first = H if first is None else int(first.sum())
    assert compact.hidden_kernel.shape == (kept_features, kept_first)
    np.testing.assert_array_equal(compact.feature_indices, np.flatnonzero(
        np.ones(D, bool) if features is None else features))
    last = kept_first
    if hidden_layers == 2:
        last = H if second is None else int(second.sum())
        assert compact.second_kernel.shape == (kept_first, last)
    assert compact.output_kernel.shape == (last, C)
    expected = kept_features * kept_first + last * C + C + (kept_first * last if hidden_layers == 2 else 0)
    assert compact.num_parameters == expected
