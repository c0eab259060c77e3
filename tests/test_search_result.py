"""SearchResult out of the tool: load and save, a table, compact heads, predictions and a Keras export."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from report_runs import tiny_config

import evojax_prune as ep
from evojax_prune import head
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.run import keras_export


@pytest.fixture(scope="module")
def in_memory():
    """A search run with out_dir=None: (SearchResult, the digits)."""
    digits = embedded.digits()
    return ep.run_search(digits, tiny_config(), seed=1), digits


def hashes(directory):
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def assert_same_fields(loaded, result):
    for field in dataclasses.fields(ep.SearchResult):
        ours, theirs = getattr(loaded, field.name), getattr(result, field.name)
        if field.name in ("params", "baseline_params"):
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
                np.testing.assert_array_equal(a, b)
        elif field.name in ("validation", "test"):
            assert sorted(ours) == sorted(theirs)
            for name in ours:
                np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        elif field.name == "masks":
            np.testing.assert_array_equal(ours, theirs)
        else:  # JSON round trip: the same values, as JSON holds them
            assert json.loads(json.dumps(ours, default=str)) == json.loads(json.dumps(theirs, default=str)), \
                field.name


def test_save_then_load_round_trips_every_field(in_memory, tmp_path):
    result, _ = in_memory
    assert result.provenance["num_features"] == 64 and result.provenance["strategy"] == "nsga2"
    path = result.save(tmp_path / "saved")
    loaded = ep.SearchResult.load(path)
    assert_same_fields(loaded, result)
    assert loaded.config == result.config
    with np.load(path / "pareto.npz") as archive:  # the file says what its full-width kernels are
        assert "NOT weights" in str(archive["note"])
    # What the CLI reads too.
    assert cli.main(["report", str(path)]) == 0


def test_load_reads_what_a_search_wrote(tiny_run):
    result, out = tiny_run
    assert_same_fields(ep.SearchResult.load(out), result)


def test_save_refuses_an_existing_run_and_changes_no_byte(in_memory, tiny_run, tmp_path, capsys):
    result, _ = in_memory
    _, out = tiny_run
    before = hashes(out)
    with pytest.raises(ValueError, match="overwrite"):
        result.save(out)
    assert hashes(out) == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        result.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_to_pandas_has_a_row_per_member_and_every_metric(in_memory):
    result, _ = in_memory
    table = result.to_pandas("test")
    assert list(table["member"]) == list(range(len(result.masks)))
    np.testing.assert_array_equal(table["active"], result.masks.sum(axis=1))
    for name, values in result.test.items():
        if name != "mem":
            np.testing.assert_array_equal(table[name], values)
    np.testing.assert_array_equal(table["mem"], result.validation["mem"])
    assert set(table["ood_score"]) == {result.config.ood.score}
    with pytest.raises(ValueError, match="split must be"):
        result.to_pandas("train")


def test_to_pandas_without_pandas_says_what_to_install(in_memory, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"evojax-prune\[tables\]"):
        in_memory[0].to_pandas()


def test_head_and_predict_are_the_members_trained_head(in_memory):
    result, digits = in_memory
    for member in ("accuracy", "mem", "auroc", -1):
        index = result.member_index(member)
        one = jax.tree.map(lambda leaf, i=index: leaf[i], result.params)
        logits = np.asarray(head.apply(one, result.masks[index], digits.x_test))
        compact = result.head(member)
        assert len(compact.feature_indices) == result.masks[index].sum()
        np.testing.assert_allclose(compact.logits(digits.x_test), logits, rtol=1e-5, atol=1e-5)
        predicted = result.predict(digits.x_test, member)
        np.testing.assert_array_equal(predicted, logits.argmax(axis=1))
        assert np.mean(predicted == digits.y_test) == pytest.approx(result.test["accuracy"][index])
    with pytest.raises(ValueError, match=r"x must be \(N, D = 64\)"):
        result.predict(digits.x_test[:, :10])


LOAD_WITH_KERAS_ALONE = textwrap.dedent("""
    import os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    import keras, numpy as np
    model = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], np.asarray(model(np.load(sys.argv[2]))))
    assert "evojax_prune" not in sys.modules, "the model needed evojax_prune"
    print(model.count_params(), sum(int(np.prod(w.shape)) for w in model.trainable_weights))
""")


@pytest.mark.parametrize("inputs", ["features", "kept"])
def test_an_exported_head_loads_in_plain_keras_and_gives_the_heads_logits(in_memory, tmp_path, inputs):
    result, digits = in_memory
    index = result.member_index("mem")
    compact = result.head(index)
    path = result.export(index, tmp_path / "head.keras", inputs=inputs)
    x = digits.x_test if inputs == "features" else digits.x_test[:, compact.feature_indices]
    np.save(tmp_path / "x.npy", x)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", LOAD_WITH_KERAS_ALONE, str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), compact.logits(digits.x_test), rtol=1e-5,
                               atol=1e-5)
    total, trainable = map(int, done.stdout.split()[-2:])
    assert trainable == compact.num_parameters  # only the kept units are trained weights
    assert total == trainable + (64 * len(compact.feature_indices) if inputs == "features" else 0)
    record = keras_export.read_record(path)
    assert record["feature_indices"] == compact.feature_indices.tolist() and record["member"] == index
    assert record["validation"]["accuracy"] == pytest.approx(result.validation["accuracy"][index])


def test_export_command_writes_a_model_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    _, out = tiny_run
    target = tmp_path / "best.keras"
    assert cli.main(["export", str(out), "--member", "accuracy", "--out", str(target)]) == 0
    assert "wrote" in capsys.readouterr().out and target.is_file()
    before = target.read_bytes()
    assert cli.main(["export", str(out), "--member", "0", "--out", str(target)]) == 2
    assert "exists" in capsys.readouterr().err and target.read_bytes() == before
    assert cli.main(["export", str(out), "--member", "99", "--out", str(tmp_path / "x.keras")]) == 2
    assert "the front has" in capsys.readouterr().err and not (tmp_path / "x.keras").exists()
    assert cli.main(["export", str(out), "--out", str(tmp_path / "x.h5")]) == 2
    assert "must end in .keras" in capsys.readouterr().err
