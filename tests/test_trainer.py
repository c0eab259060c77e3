"""The population trainer against a plain sequential reference, and its invariances."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from evojax_prune import head
from evojax_prune.config import EngineConfig, HeadConfig, RunConfig, TrainConfig
from evojax_prune.train import epochs, memory, optimizer, packing, plan, trainer, xla_step

D, H, C, N = 64, 8, 3, 50  # N = 6 full batches of 8 + a partial batch of 2; D gives 2 capacities
RTOL, ATOL = 2e-4, 2e-5


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    # Labels from a few features, so that masks matter and the full head can learn.
    y = np.argmax(x[:, :C] + 0.5 * x[:, C : 2 * C], axis=1).astype(np.int32)
    return x, y


def _author_masks(seed, population, num_features=D):
    """The authors' initialisation: p ~ U(0, 1), exactly round(p * D) ones at random positions."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((population, num_features), bool)
    for row in masks:
        row[rng.choice(num_features, round(rng.uniform() * num_features), replace=False)] = True
    return masks


def _config(**train):
    # One max_epochs for all: the initial weights and epoch orders compile once per shape.
    defaults = dict(learning_rate=0.05, batch_size=8, max_epochs=8, patience=3, min_delta=1e-5)
    return RunConfig(head=HeadConfig(hidden=H), train=TrainConfig(**{**defaults, **train}))


_SHARED_CONFIG = _config(patience=2, min_delta=0.02)


@jax.jit
def _accuracy_jit(params, masks, x, y):
    logits = head.apply_population(params, masks, x)
    return jnp.mean(jnp.argmax(logits, -1) == y[None], axis=1)


def _accuracy(params, masks, x, y):
    return np.asarray(_accuracy_jit(params, jnp.asarray(masks), jnp.asarray(x), jnp.asarray(y)))


def _head(params, i):
    return jax.tree.map(lambda leaf: leaf[i], params)


def _assert_params_close(actual, expected, rtol=RTOL, atol=ATOL):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


_DEFAULT_HEAD = HeadConfig(hidden=H)


def _reference_logits(params, chromosome, x, head_config):
    """A head's logits with its pruned connections removed from the kernels.

    Written from the method, not from ``head.apply`` (which masks values): a
    pruned feature loses its row of the first kernel, a pruned neuron its
    incoming column and its outgoing row.
    """
    hidden = head_config.hidden
    ones = jnp.ones((hidden,))
    features, first, second = jnp.ones((x.shape[1],)), ones, ones
    if head_config.prune == "features":
        features = chromosome
    elif head_config.prune == "hidden1":
        first = chromosome
    elif head_config.prune == "hidden2":
        second = chromosome
    else:
        first, second = chromosome[:hidden], chromosome[hidden:]
    features, first, second = (m.astype(jnp.float32) for m in (features, first, second))
    activations = jax.nn.relu(x @ (params.hidden_kernel * features[:, None] * first[None, :]))
    last_kept = first
    if head_config.hidden_layers == 2:
        activations = jax.nn.relu(activations @ (params.second_kernel * first[:, None] * second[None, :]))
        last_kept = second
    return activations @ (params.output_kernel * last_kept[:, None]) + params.output_bias


@functools.cache
def _keras_reference_step(train, head_config=_DEFAULT_HEAD):
    """Keras 2.2.4's SGD and loss, spelled out: (init, step) for one head.

    The loss is ``categorical_crossentropy`` on softmax outputs clipped to
    [eps, 1 - eps], differentiated by autodiff (no gradient beyond the
    bounds); SGD is Keras' ``lr_t = lr / (1 + decay * t)``, ``v = mu v - lr_t
    g``, Nesterov ``p += mu v - lr_t g``.
    """
    epsilon, mu = train.probability_epsilon, train.momentum

    def init(params):
        return jax.tree.map(jnp.zeros_like, params), 0

    @jax.jit
    def update(params, velocity, t, mask, xb, yb):
        def loss_fn(p):
            probabilities = jax.nn.softmax(_reference_logits(p, mask, xb, head_config))
            right = probabilities[jnp.arange(len(yb)), yb]
            return -jnp.mean(jnp.log(jnp.clip(right, epsilon, 1 - epsilon)))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        rate = train.learning_rate / (1 + train.lr_decay * t)
        velocity = jax.tree.map(lambda v, g: mu * v - rate * g, velocity, grads)
        params = jax.tree.map(lambda p, v, g: p + mu * v - rate * g, params, velocity, grads)
        return params, velocity, loss

    def step(params, state, mask, xb, yb):
        velocity, t = state
        params, velocity, loss = update(params, velocity, jnp.float32(t), mask, xb, yb)
        return params, (velocity, t + 1), loss

    return init, step


@functools.cache
def _reference_step(train, head_config=_DEFAULT_HEAD):
    """The optimizer's init and a jitted plain training step for one head, cached per TrainConfig."""
    if train.lr_decay or train.probability_epsilon:
        return _keras_reference_step(train, head_config)
    if train.optimizer == "sgd":
        optimizer = optax.sgd(train.learning_rate, momentum=train.momentum, nesterov=train.nesterov)
    else:
        optimizer = getattr(optax, train.optimizer)(train.learning_rate)

    @jax.jit
    def step(params, opt_state, mask, xb, yb):
        def loss_fn(p):
            logits = _reference_logits(p, mask, xb, head_config)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer.init, step


def reference_train(key, masks, x, y, config, num_classes):
    """One head at a time, one epoch at a time, one batch at a time: Keras' fit, spelled out.

    Written from the protocol, not from the trainer: the same initial weights
    for every head (the first half of ``split(key)``), epoch e shuffled by
    ``permutation(fold_in(second half, e), N)``, the last short batch used as
    is, the epoch loss the sample-weighted mean of batch losses, Keras'
    EarlyStopping on it: with ``restore_at_max_epochs`` off, Keras 2.2.4's,
    which restores the best weights only when it stops the head. Returns per
    head: params (best or last), epochs run, the loss of the returned epoch,
    the best epoch, whether early stopping stopped it, and every epoch's params.
    """
    train = config.train
    init_key, order_key = jax.random.split(key)
    init_params = head.init(init_key, x.shape[1], num_classes, config.head.hidden, config.head.hidden_layers)
    optimizer_init, step = _reference_step(train, config.head)
    results = []
    for mask in jnp.asarray(masks):
        params, opt_state = init_params, optimizer_init(init_params)
        best_loss, best_params, best_epoch, kept_loss, wait = np.inf, None, 0, np.inf, 0
        stopped = False
        history = []
        for epoch in range(train.max_epochs):
            order = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, epoch), len(x)))
            total = 0.0
            for start in range(0, len(x), train.batch_size):
                batch = order[start : start + train.batch_size]
                params, opt_state, loss = step(params, opt_state, mask, x[batch], y[batch])
                total += float(loss) * len(batch)
            epoch_loss = total / len(x)
            history.append(params)
            wait += 1
            if epoch_loss < best_loss - train.min_delta:
                best_loss, best_params, best_epoch, kept_loss, wait = epoch_loss, params, epoch, epoch_loss, 0
            elif wait >= train.patience and epoch > 0:
                stopped = True
                break
        restored = train.restore_best and (stopped or train.restore_at_max_epochs)
        results.append(
            dict(
                params=best_params if restored else params,
                epochs=epoch + 1,
                final_loss=kept_loss if restored else epoch_loss,
                best_epoch=best_epoch,
                stopped=stopped,
                history=history,
            )
        )
    return results


@pytest.mark.parametrize("kernel_transposed", [True, False], ids=["kernel-(H,c)", "kernel-(c,H)"])
@pytest.mark.parametrize(
    ("gather_features", "restore_best"), [("auto", True), (False, False)], ids=["gathered-best", "dense-last"]
)
def test_matches_sequential_reference(gather_features, restore_best, kernel_transposed):
    # (c, H): the layout a GPU trains chunks of one head in; a CPU's is (H, c).
    layout = "hidden_by_kept" if kernel_transposed else "kept_by_hidden"
    x, y = _data()
    masks = _author_masks(1, 5)
    masks[0] = True  # one full head
    masks[1] = False  # one empty head
    config = _SHARED_CONFIG.replace(train={"restore_best": restore_best},
                                    engine={"gather_features": gather_features, "kernel_layout": layout})
    key = jax.random.key(3)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    assert trained.epochs.dtype == jnp.int32 and trained.final_loss.dtype == jnp.float32
    epochs = [r["epochs"] for r in expected]
    np.testing.assert_array_equal(trained.epochs, epochs)
    assert min(epochs) < config.train.max_epochs  # early stopping happened
    np.testing.assert_array_equal(trained.best_epoch, [r["best_epoch"] for r in expected])
    np.testing.assert_allclose(trained.final_loss, [r["final_loss"] for r in expected], rtol=1e-5)
    for i, reference in enumerate(expected):
        _assert_params_close(_head(trained.params, i), reference["params"])


def test_keras_2_2_4_semantics_match_their_rules():
    # The paper preset's training: Keras' SGD decay, its clipped cross-entropy, and its
    # EarlyStopping restoring the best weights only when it stops a head. Decay and epsilon
    # are far above the authors' (1e-6, 1e-7) so that both change the weights in 8 epochs.
    x, y = _data(seed=4)
    masks = _author_masks(5, 6)
    masks[0] = True
    masks[1] = False
    keras = dict(lr_decay=0.05, probability_epsilon=0.05, restore_at_max_epochs=False)
    config = _config(patience=3, min_delta=0.01, **keras)
    key = jax.random.key(5)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    np.testing.assert_array_equal(trained.epochs, [r["epochs"] for r in expected])
    np.testing.assert_array_equal(trained.best_epoch, [r["best_epoch"] for r in expected])
    np.testing.assert_allclose(trained.final_loss, [r["final_loss"] for r in expected], rtol=1e-5)
    for i, reference in enumerate(expected):
        _assert_params_close(_head(trained.params, i), reference["params"])
    # Both cases of the restore rule occur: a stopped head got its best weights back, and a
    # head that ran all epochs kept its last ones although an earlier epoch was better.
    stopped = [r for r in expected if r["stopped"]]
    ran_out = [r for r in expected if not r["stopped"] and r["best_epoch"] < r["epochs"] - 1]
    assert stopped and ran_out, [(r["epochs"], r["best_epoch"]) for r in expected]
    kept_last = ran_out[0]
    last, best = kept_last["history"][-1], kept_last["history"][kept_last["best_epoch"]]
    assert float(jnp.max(jnp.abs(last.output_bias - best.output_bias))) > 1e-4
    # Decay and clipping each change the weights (the rules are not vacuous here).
    full = expected[0]["history"][3]
    for change in ({"lr_decay": 0.0}, {"probability_epsilon": 0.0}):
        other = reference_train(key, masks[:1], x, y, config.replace(train=change), C)[0]
        assert float(jnp.max(jnp.abs(other["history"][3].hidden_kernel - full.hidden_kernel))) > 1e-4


@pytest.mark.parametrize(
    ("hidden_layers", "prune"), [(1, "hidden1"), (2, "features"), (2, "hidden1"), (2, "hidden2"), (2, "both")]
)
def test_head_shapes_and_pruning_targets_match_sequential_reference(hidden_layers, prune):
    x, y = _data(seed=4)
    head_config = HeadConfig(hidden=H, hidden_layers=hidden_layers, prune=prune)
    length = head_config.chromosome_length(D)
    masks = _author_masks(5, 4, num_features=length)
    masks[0] = True
    masks[1] = False
    config = _SHARED_CONFIG.replace(head={"hidden_layers": hidden_layers, "prune": prune})
    key = jax.random.key(6)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    np.testing.assert_array_equal(trained.epochs, [r["epochs"] for r in expected])
    np.testing.assert_allclose(trained.final_loss, [r["final_loss"] for r in expected], rtol=1e-5)
    assert (trained.params.second_kernel is None) == (hidden_layers == 1)
    for i, reference in enumerate(expected):
        _assert_params_close(_head(trained.params, i), reference["params"])
    # The head's own forward pass (values masked) gives the reference's logits.
    for i in range(len(masks)):
        np.testing.assert_allclose(head.apply(_head(trained.params, i), masks[i], x, prune),
                                   _reference_logits(_head(trained.params, i), masks[i], x, head_config),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine", [{}, {"chunk_size": 3}], ids=["one-head-chunks", "packed-chunks-of-3"])
def test_heads_of_several_runs_train_as_in_their_run_alone(engine):
    x, y = _data(seed=7)
    masks = _author_masks(8, 7)
    runs = np.array([2, 0, 2, 2, 0, 2, 2])  # run 1 has no head; run 2's five heads span two chunks of 3
    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (20, 21, 22)])
    config = _SHARED_CONFIG.replace(engine=engine)
    together = trainer.train_population(keys, masks, x, y, config, runs=runs)
    for run in (0, 2):
        alone = trainer.train_population(keys[run], masks[runs == run], x, y, config)
        for got, expected in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
            np.testing.assert_array_equal(np.asarray(got)[runs == run], np.asarray(expected))
    with pytest.raises(ValueError, match=r"runs must lie in \[0, 3\)"):
        trainer.train_population(keys, masks, x, y, config, runs=np.full(7, 3))
    with pytest.raises(ValueError, match=r"runs must be \(7,\) integers"):
        trainer.train_population(keys, masks, x, y, config, runs=np.zeros(6, int))


@pytest.mark.parametrize(
    ("hidden_layers", "prune", "engine"),
    [(1, "hidden1", {}), (2, "hidden2", {"chunk_size": 3}), (2, "both", {}), (2, "both", {"chunk_size": 3})],
    ids=["hidden1", "hidden2-chunks-of-3", "both", "both-chunks-of-3"],
)
def test_heads_trained_on_their_kept_neurons_equal_the_full_width_layers(hidden_layers, prune, engine):
    hidden = 96  # capacities 32, 64, 96: heads keeping few neurons train narrower layers
    x, y = _data(seed=9)
    head_config = HeadConfig(hidden=hidden, hidden_layers=hidden_layers, prune=prune)
    masks = np.random.default_rng(10).random((5, head_config.chromosome_length(D))) < [[0.2], [0.5], [0.9],
                                                                                      [0.0], [1.0]]
    config = _SHARED_CONFIG.replace(head={"hidden": hidden, "hidden_layers": hidden_layers, "prune": prune},
                                    engine=engine)
    narrow = trainer.train_population(jax.random.key(11), masks, x, y, config)
    full_width = trainer.train_population(jax.random.key(11), masks, x, y,
                                          config.replace(engine={"gather_features": False}))
    training_plan = trainer.training_plan(config, 5, D, C)
    assert training_plan.neurons and [layout.tile_rows for layout in training_plan.layouts] == [32, 64, 96]
    assert not trainer.training_plan(config.replace(engine={"gather_features": False}), 5, D, C).neurons
    np.testing.assert_array_equal(narrow.epochs, full_width.epochs)
    _assert_params_close(narrow.params, full_width.params)
    init = head.init(jax.random.split(jax.random.key(11))[0], D, C, hidden, hidden_layers)
    first = masks[:, :hidden] if prune in ("hidden1", "both") else np.ones((5, hidden), bool)
    # A pruned neuron's weights never moved: its incoming column and outgoing row are the initial ones.
    pruned = ~first
    np.testing.assert_array_equal(np.asarray(narrow.params.hidden_kernel).transpose(0, 2, 1)[pruned],
                                  np.broadcast_to(np.asarray(init.hidden_kernel).T, (5, hidden, D))[pruned])


def test_invariant_to_population_position_and_chunking():
    x, y = _data(seed=1)
    masks = _author_masks(2, 24)  # 7 does not divide it: padded chunks
    config = _config()
    counts = masks.sum(axis=1)
    assert counts.min() <= 32 < counts.max()  # both capacities (32, 64) are used
    key = jax.random.key(7)
    # Every head alone (one compile, 24 small calls), stacked for comparison.
    alone = [trainer.train_population(key, masks[i : i + 1], x, y, config) for i in range(24)]
    alone = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *alone)
    accuracy_alone = _accuracy(alone.params, masks, x, y)
    assert accuracy_alone.max() > 0.8  # the heads learned something
    for chunk_size in (1, 7, 24):
        chunked = config.replace(engine={"chunk_size": chunk_size})
        together = trainer.train_population(key, masks, x, y, chunked)
        assert together.epochs.shape == (24,)
        _assert_params_close(together.params, alone.params)
        np.testing.assert_array_equal(together.epochs, alone.epochs)
        np.testing.assert_array_equal(_accuracy(together.params, masks, x, y), accuracy_alone)


def test_early_stopping_restores_best_weights_and_stops_plateaued_heads_only():
    x, y = _data(seed=2)
    masks = _author_masks(7, 5)
    masks[0] = False  # sees nothing: plateaus at the class prior
    masks[1] = True  # keeps learning
    # The shapes and config of the reference test above: no new compile.
    config = _SHARED_CONFIG
    key = jax.random.key(11)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    epochs = np.asarray(trained.epochs)
    assert epochs[0] < epochs[1], epochs
    np.testing.assert_array_equal(epochs, [r["epochs"] for r in expected])
    for i, reference in enumerate(expected):
        best = reference["history"][reference["best_epoch"]]
        _assert_params_close(_head(trained.params, i), best)
    # The plateaued head ran past its best epoch and its weights moved after it:
    # returning the best weights is visible.
    plateaued = expected[0]
    assert plateaued["best_epoch"] < plateaued["epochs"] - 1
    last = plateaued["history"][-1]
    best = plateaued["history"][plateaued["best_epoch"]]
    moved = float(jnp.max(jnp.abs(last.output_bias - best.output_bias)))
    assert moved > 1e-3
    assert float(jnp.max(jnp.abs(trained.params.output_bias[0] - last.output_bias))) > 1e-3
    np.testing.assert_allclose(trained.final_loss, [r["final_loss"] for r in expected], rtol=1e-5)
    assert bool(jnp.all(trained.best_loss <= trained.final_loss + 1e-7))


def test_all_zero_mask_trains_without_nan_and_pruned_rows_keep_their_initial_values():
    x, y = _data()
    masks = _author_masks(6, 5)
    masks[0] = False
    masks[1] = np.arange(D) < 5
    masks[2] = True
    key = jax.random.key(5)
    # The same shapes and config as the gathered reference test: no new compile.
    trained = trainer.train_population(key, masks, x, y, _SHARED_CONFIG)
    for leaf in jax.tree.leaves(trained):
        assert bool(jnp.all(jnp.isfinite(leaf))), leaf
    initial = head.init(jax.random.split(key)[0], D, C, H)  # eager, as in reference_train
    kernel = np.asarray(trained.params.hidden_kernel)
    np.testing.assert_array_equal(kernel[0], initial.hidden_kernel)
    np.testing.assert_array_equal(kernel[1, 5:], initial.hidden_kernel[5:])
    assert np.abs(kernel[1, :5] - initial.hidden_kernel[:5]).max() > 1e-4
    assert np.abs(kernel[2] - initial.hidden_kernel).max() > 1e-4
    # The empty head trained its bias only, and predicts the same for every sample.
    assert float(jnp.max(jnp.abs(trained.params.output_bias[0]))) > 1e-4
    logits = head.apply(_head(trained.params, 0), jnp.asarray(masks[0]), jnp.asarray(x))
    np.testing.assert_allclose(logits, jnp.broadcast_to(logits[0], logits.shape), rtol=1e-6)


def test_digits_full_mask_reaches_high_test_accuracy():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.3, stratify=digits.target, random_state=0
    )
    num_features = x.shape[1]
    masks = np.ones((2, num_features), bool)
    masks[1, ::2] = False  # a half mask rides along
    config = RunConfig(
        head=HeadConfig(hidden=64),
        train=TrainConfig(learning_rate=0.05, batch_size=32, max_epochs=25, patience=3),
    )
    key = jax.random.key(0)
    dense = config.replace(engine={"gather_features": False})
    trained = trainer.train_population(key, masks, x_train, y_train, dense)
    accuracy = _accuracy(trained.params, masks, x_test, y_test)
    assert accuracy[0] > 0.9, accuracy
    assert accuracy[1] > 0.5, accuracy


def test_adam_matches_reference_and_learns():
    x, y = _data(seed=3)
    masks = _author_masks(4, 3)
    masks[0] = True
    config = _config(optimizer="adam", learning_rate=0.03)
    key = jax.random.key(2)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    for i, reference in enumerate(expected):
        _assert_params_close(_head(trained.params, i), reference["params"])
    assert _accuracy(trained.params, masks, x, y)[0] > 0.8


def test_non_separable_optimizer_trains_the_dense_kernel():
    # adamw decays pruned rows too: the gathered path would not be the same training.
    x, y = _data(seed=3)
    masks = _author_masks(5, 2)
    config = _config(optimizer="adamw", learning_rate=1e-2)
    key = jax.random.key(4)
    trained = trainer.train_population(key, masks, x, y, config)
    expected = reference_train(key, masks, x, y, config, C)
    for i, reference in enumerate(expected):
        _assert_params_close(_head(trained.params, i), reference["params"])
    with pytest.raises(ValueError, match=r"EngineConfig\.gather_features needs an optimizer from"):
        trainer.train_population(key, masks, x, y, config.replace(engine={"gather_features": True}))


def test_population_gradients_equal_autodiff():
    rng = np.random.default_rng(0)
    params = head.HeadParams(
        hidden_kernel=jnp.asarray(rng.normal(size=(3, D, H)), jnp.float32),
        output_kernel=jnp.asarray(rng.normal(size=(3, H, C)), jnp.float32),
        output_bias=jnp.asarray(rng.normal(size=(3, C)), jnp.float32),
    )
    masks = jnp.asarray(rng.random((3, D)) < 0.5)
    x = jnp.asarray(rng.normal(size=(8, D)), jnp.float32)
    labels = jnp.arange(8) % C
    weights = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)

    def autodiff_loss(p, mask):
        per_sample = optax.softmax_cross_entropy_with_integer_labels(head.apply(p, mask, x), labels)
        return jnp.sum(per_sample * weights) / jnp.sum(weights)

    expected_loss, expected_grads = jax.jit(jax.vmap(jax.value_and_grad(autodiff_loss)))(params, masks)
    inputs = x[None] * masks[:, None, :]
    loss, grads = jax.jit(xla_step.population_loss_and_grads)(params, inputs, labels, weights)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    _assert_params_close(grads, expected_grads, rtol=1e-5, atol=1e-7)
    # The kernel stored (K, H, D): its gradient comes back the same way.
    swapped = params.replace(hidden_kernel=jnp.swapaxes(params.hidden_kernel, 1, 2))
    loss, grads = jax.jit(xla_step.population_loss_and_grads, static_argnames="kernel_transposed")(
        swapped, inputs, labels, weights, kernel_transposed=True)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    grads = grads.replace(hidden_kernel=jnp.swapaxes(grads.hidden_kernel, 1, 2))
    _assert_params_close(grads, expected_grads, rtol=1e-5, atol=1e-7)


def _plan(engine=None, train=None, population=4, platform="cpu", num_features=2048, hidden=512):
    return plan.make_plan(EngineConfig(**(engine or {})), TrainConfig(**(train or {})), population=population,
                          num_features=num_features, num_classes=3, hidden=hidden, platform=platform)


def test_what_auto_resolves_to_on_each_platform():
    cpu, gpu = _plan(), _plan(platform="gpu")
    assert cpu.chunk_size == 1 and len(cpu.layouts) == 16 and cpu.kernel_transposed  # (H, c) on a CPU
    assert cpu.step == "xla" and cpu.tile_sum == "scatter" and cpu.command_buffers
    assert gpu.chunk_size == 4 and gpu.packed and len(gpu.layouts) == 8 and not gpu.kernel_transposed
    assert gpu.step == "fused_sgd" and gpu.tile_sum == "gather" and not gpu.command_buffers
    assert not _plan({"chunk_size": 1}, platform="gpu").kernel_transposed  # (c, H) off a CPU
    assert _plan({"chunk_size": 1}, platform="gpu").command_buffers  # one-head chunks keep them
    assert _plan({"kernel_layout": "kept_by_hidden"}).kernel_transposed is False
    assert _plan({"capacity_levels": 8}).layouts == plan.chunk_layouts(2048, 1, True, 8)
    assert _plan({"tile_sum": "scatter"}, platform="gpu").tile_sum == "scatter"
    assert _plan({"command_buffers": True}, platform="gpu").command_buffers
    assert _plan({"gather_features": False}).layouts == (plan.ChunkLayout(2048, 1, per_head=True),)
    assert _plan(train={"optimizer": "adamw"}).layouts == (plan.ChunkLayout(2048, 1, per_head=True),)
    # Explicit settings that cannot apply name the field.
    with pytest.raises(ValueError, match="kernel_layout 'hidden_by_kept' is for chunks of one head"):
        _plan({"chunk_size": 4, "kernel_layout": "hidden_by_kept"})
    with pytest.raises(ValueError, match=r"step 'fused_sgd' needs TrainConfig\.optimizer 'sgd'"):
        _plan({"chunk_size": 4, "step": "fused_sgd"}, {"optimizer": "adam"})
    with pytest.raises(ValueError, match=r"chunk_size must be 'auto' or an integer >= 1, got 0$"):
        EngineConfig(chunk_size=0)
    with pytest.raises(ValueError, match=r"EngineConfig\.tile_sum must be 'auto' or one of"):
        EngineConfig(tile_sum="atomic")
    # The plan is hashable (a static argument) and JSON-ready.
    assert hash(cpu) != hash(gpu) and _plan() == cpu
    assert cpu.to_dict()["layouts"][0] == {"tile_rows": 128, "num_tiles": 1, "per_head": True}


def test_epoch_orders_and_batches_cover_every_sample_once_and_pad_the_last_batch():
    key = jax.random.key(0)
    orders = epochs.epoch_orders(key, 3, 50)
    assert orders.shape == (3, 50) and orders.dtype == jnp.int32
    np.testing.assert_array_equal(orders[2], jax.random.permutation(jax.random.fold_in(key, 2), 50))
    assert not np.array_equal(orders[0], orders[1])
    indices, weights = epochs.epoch_batches(orders[1], 8)
    assert indices.shape == weights.shape == (7, 8)
    real = np.asarray(indices)[np.asarray(weights) > 0]
    np.testing.assert_array_equal(real, orders[1])
    np.testing.assert_array_equal(np.asarray(weights).sum(1), [8] * 6 + [2])


def test_chunk_size_and_capacities():
    config, train = EngineConfig(memory_budget_mb=100.0), TrainConfig()
    per_head = memory.training_bytes(2048, 3, 512, train)
    assert 20 * 2**20 < per_head < 30 * 2**20  # about 5 parameter copies + momentum
    fits = int(100 * 2**20 // per_head)

    def choose(population, engine, platform):
        return plan.choose_chunk_size(population, 2048, 3, 512, train, engine, platform)

    chunk = choose(100, config, "gpu")
    assert chunk <= fits and -(-100 // chunk) == -(-100 // fits)  # balanced, no extra chunk
    assert choose(3, config, "gpu") == 3
    roomy = EngineConfig(memory_budget_mb=10_000.0)
    assert choose(100, roomy, "gpu") == 25  # 4 balanced chunks
    cap = roomy.max_heads_per_chunk
    # The authors' generations of 34 offspring: one chunk, not two of 17; beyond a quarter above
    # the cap, balanced chunks under it; a tight memory budget still splits.
    assert choose(34, roomy, "gpu") == 34
    assert choose(cap + cap // 4, roomy, "gpu") == cap + cap // 4
    assert choose(cap + cap // 4 + 1, roomy, "gpu") <= cap
    assert choose(256, roomy, "gpu") == cap
    assert choose(34, config, "gpu") <= fits
    assert choose(100, config, "cpu") == 1
    assert choose(100, EngineConfig(chunk_size=7), "gpu") == 7
    assert choose(5, EngineConfig(chunk_size=64), "cpu") == 5
    assert choose(256, EngineConfig(memory_budget_mb=10_000.0, max_heads_per_chunk=64), "gpu") == 64
    assert plan.capacity_levels(2048) == (256, 512, 768, 1024, 1280, 1536, 1792, 2048)
    assert plan.capacity_levels(64) == (32, 64)
    assert plan.capacity_levels(16) == (16,)
    assert plan.capacity_levels(20)[-1] == 20


def test_chunk_layouts_and_the_level_a_chunk_needs():
    layouts = plan.chunk_layouts(2048, 1, gather=True)
    # A chunk of one head: 16 levels of 128 rows (packed chunks below: tiles from the 8 levels).
    assert [layout.tile_rows for layout in layouts] == list(range(128, 2049, 128))
    assert plan.capacity_levels(2048, 16) == tuple(range(128, 2049, 128))
    assert all(layout.per_head and layout.num_tiles == 1 for layout in layouts)
    assert plan.chunk_layouts(2048, 32, gather=False) == (plan.ChunkLayout(2048, 32, per_head=True),)
    packed = plan.chunk_layouts(2048, 32, gather=True)
    assert {layout.tile_rows for layout in packed} == {128} and not packed[0].per_head
    assert [layout.num_tiles for layout in packed] == [64 * level for level in range(1, 9)]
    # 3 heads of 1, 128 and 129 features need 1 + 1 + 2 tiles; padding heads (-1) none.
    counts = jnp.asarray([1, 128, 129, -1])
    assert int(packing.layout_level(packed, counts)) == 0
    assert int(packing.layout_level(packed, jnp.full(32, 2048))) == 7
    assert int(packing.layout_level(packed, jnp.asarray([2048] * 8 + [0] * 24))) == 1  # 128 tiles
    assert int(packing.layout_level(layouts, counts)) == 1  # one head per chunk: the widest, 129
    assert int(packing.layout_level(layouts, jnp.asarray([128]))) == 0
    assert int(packing.layout_level(layouts, jnp.asarray([257]))) == 2  # 384 rows


_FUSED = {"step": "fused_sgd"}
_PLAIN_SGD = {"momentum": 0.0, "nesterov": False}


@pytest.mark.parametrize(
    ("engine", "train"),
    [({}, {}), (_FUSED, {}), (_FUSED, _PLAIN_SGD), ({}, {"lr_decay": 0.05, "probability_epsilon": 0.05}),
     (_FUSED, {"probability_epsilon": 0.05})],
    ids=["xla", "fused", "fused-plain-sgd", "xla-keras", "fused-clipped"],
)
def test_packed_chunk_of_mixed_heads_equals_each_head_alone(engine, train):
    """One chunk holding an empty head, tiny and full heads: packed tiles (16 rows at D = 64).

    Also with the fused kernel of the first layer's SGD step (``fused_sgd``,
    one program per tile, interpreted here), against each head trained alone
    by XLA.
    """
    x, y = _data(seed=4)
    masks = _author_masks(9, 6)
    masks[0] = False
    masks[1] = False
    masks[1, [3, 40]] = True  # 2 features: one partly used tile
    masks[2] = True  # all 64: 4 full tiles
    masks[3, :] = False
    masks[3, :17] = True  # 17: a full tile and a tile of one row
    config = _SHARED_CONFIG.replace(train=train)
    key = jax.random.key(5)
    one_chunk = config.replace(engine={"chunk_size": 6, **engine})
    # The reference first: each head alone, by XLA's ordinary step.
    alone = [trainer.train_population(key, masks[i : i + 1], x, y, config) for i in range(6)]
    alone = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *alone)
    together = trainer.train_population(key, masks, x, y, one_chunk)
    chunk_plan = trainer.training_plan(one_chunk, 6, D, C)
    assert chunk_plan.packed and chunk_plan.step == engine.get("step", "xla")
    np.testing.assert_array_equal(together.epochs, alone.epochs)
    assert together.epochs.min() < config.train.max_epochs  # heads stopped while others trained
    np.testing.assert_array_equal(together.best_epoch, alone.best_epoch)
    _assert_params_close(together.params, alone.params)
    # Pruned rows keep their initial values, in both layouts.
    initial = together.params.hidden_kernel[0]
    np.testing.assert_array_equal(np.asarray(together.params.hidden_kernel[1])[~masks[1]],
                                  np.asarray(initial)[~masks[1]])


@pytest.mark.parametrize("step", ["xla", "fused_sgd"])
def test_tiles_summed_by_gathering_equal_the_segment_sum(step):
    """``EngineConfig.tile_sum`` "gather" (a GPU's default): the same heads as the scatter (a CPU's)."""
    x, y = _data(seed=4)
    masks = _author_masks(9, 6)
    masks[0] = False
    masks[2] = True
    config = _SHARED_CONFIG.replace(engine={"chunk_size": 6, "step": step})
    key = jax.random.key(5)
    assert trainer.training_plan(config, 6, D, C).tile_sum == "scatter"
    scattered = trainer.train_population(key, masks, x, y, config)
    gathered = trainer.train_population(key, masks, x, y, config.replace(engine={"tile_sum": "gather"}))
    np.testing.assert_array_equal(gathered.epochs, scattered.epochs)
    _assert_params_close(gathered.params, scattered.params)


@pytest.mark.parametrize(
    "engine", [{}, {"chunk_size": 5}, {"chunk_size": 5, **_FUSED}],
    ids=["alone", "packed", "packed-fused"],
)
def test_placeholder_heads_never_train(engine):
    """``num_trained``: the first heads train as they would alone; the rest keep their initial weights."""
    x, y = _data(seed=6)
    masks = _author_masks(11, 5)
    config = _SHARED_CONFIG.replace(engine=engine)
    key = jax.random.key(8)
    trained = trainer.train_population(key, masks, x, y, config, num_trained=3)
    alone = trainer.train_population(key, masks[:3], x, y, _SHARED_CONFIG)
    np.testing.assert_array_equal(trained.epochs, [*np.asarray(alone.epochs), 0, 0])
    _assert_params_close(jax.tree.map(lambda leaf: leaf[:3], trained.params), alone.params)
    initial = head.init(jax.random.split(key)[0], D, C, H)
    for i in (3, 4):
        _assert_params_close(_head(trained.params, i), initial, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_trained must lie in"):
        trainer.train_population(key, masks, x, y, config, num_trained=6)


def test_make_optimizer():
    sgd = optimizer.make_optimizer(TrainConfig())
    adam = optimizer.make_optimizer(TrainConfig(optimizer="adam", optimizer_options=(("b1", 0.8),)))
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.full(3, 2.0)}
    updates, _ = sgd.update(grads, sgd.init(params), params)
    # Nesterov SGD, first step: -lr * (g + momentum * g).
    np.testing.assert_allclose(updates["w"], -1e-3 * (2.0 + 0.9 * 2.0), rtol=1e-6)
    updates, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-4)


def test_keras_sgd_with_decay_follows_keras_update_rule():
    # keras/optimizers.py SGD (2.2.4), in float64 numpy: lr_t = lr / (1 + decay t),
    # v = mu v - lr_t g, Nesterov p += mu v - lr_t g, else p += v.
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(6, 4))
    for momentum, nesterov in ((0.9, True), (0.9, False), (0.0, False)):
        train = TrainConfig(learning_rate=0.1, momentum=momentum, nesterov=nesterov, lr_decay=0.3)
        keras = optimizer.make_optimizer(train)
        params = np.zeros(4)
        state = keras.init(jnp.zeros(4, jnp.float32))
        mine = jnp.zeros(4, jnp.float32)
        velocity = np.zeros(4)
        for t, g in enumerate(grads):
            rate = 0.1 / (1 + 0.3 * t)
            velocity = momentum * velocity - rate * g
            params = params + (momentum * velocity - rate * g if nesterov else velocity)
            updates, state = keras.update(jnp.asarray(g, jnp.float32), state)
            mine = mine + updates
        np.testing.assert_allclose(mine, params, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"lr_decay.*needs optimizer 'sgd'"):
        TrainConfig(optimizer="adam", lr_decay=1e-6)
    with pytest.raises(ValueError, match=r"fused_sgd.*lr_decay"):
        _plan({"step": "fused_sgd"}, {"lr_decay": 1e-6}, population=32, platform="gpu")
    assert _plan(None, {"lr_decay": 1e-6}, population=32, platform="gpu").step == "xla"
    assert _plan(None, None, population=32, platform="gpu").step == "fused_sgd"


def test_rejects_bad_shapes_and_labels():
    x, y = _data()
    masks = np.ones((2, D), bool)
    config = _config()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="masks"):
        trainer.train_population(key, masks[0], x, y, config)
    with pytest.raises(ValueError, match=r"masks must be \(P, 63\), a bit for each of the 63 features"):
        trainer.train_population(key, masks, x[:, :-1], y, config)
    with pytest.raises(ValueError, match="x must be"):
        trainer.train_population(key, masks, x[0], y, config)
    with pytest.raises(ValueError, match="y must be"):
        trainer.train_population(key, masks, x, y[:-1], config)
    with pytest.raises(ValueError, match="labels"):
        trainer.train_population(key, masks, x, y, config, num_classes=2)
