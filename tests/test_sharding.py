"""The population split over devices and over processes gives the one-device results.

Simulated devices: a subprocess with ``--xla_force_host_platform_device_count=4``
(4 CPU devices in one process). Several hosts: two processes on localhost, one
CPU device each, joined by ``jax.distributed`` (Gloo collectives): a global
mesh of 2 devices. Both are compared with the one-device run of this process.

Equality is exact (``assert_array_equal``) for the masks, the three objectives,
the trained weights and every metric but the two AUPRs: those sum float32
precisions inside a vmap whose width is the per-device head count, and XLA
may associate that sum differently for another width (1 ulp, seen on CPU; the
same holds for evaluate's chunk size, tests/test_evaluate.py). They are not
objectives, so the search never sees them.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from evojax_prune import config, devices
from evojax_prune.cli import main as cli
from evojax_prune.data import embedded
from evojax_prune.score import evaluate
from evojax_prune.search.loop import run_search
from evojax_prune.train import trainer

REPO = Path(__file__).resolve().parents[1]
ULP_METRICS = ("aupr_in", "aupr_out")
TIMEOUT = 240

# One short search and one population of P = 6 (not a multiple of 4), written to OUT/NAME.npz.
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    out, name = Path(sys.argv[1]), sys.argv[2]
    from evojax_prune import devices
    if len(sys.argv) > 3:  # process id, port: one of two processes on localhost
        devices.initialize_distributed(f"localhost:{sys.argv[4]}", 2, int(sys.argv[3]))

    import jax
    import numpy as np

    import os

    import evojax_prune
    sys.path.insert(0, TESTS_DIR)
    from test_sharding import FUSED, population_run, search_run

    writes = []  # files this process opens for writing in the run directory (an audit hook)

    def count_writes(event, arguments):
        if event == "open" and str(arguments[0]).startswith(str(out / "run")):
            mode, flags = arguments[1], arguments[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)):
                writes.append(str(arguments[0]))

    sys.addaudithook(count_writes)
    arrays = search_run(out / "run" if len(sys.argv) > 3 else None)
    if len(sys.argv) > 3:
        # float64 that float32 cannot hold agrees; a real difference is caught.
        devices.assert_same_on_every_process((np.array([0.1, 1 / 3]), np.ones(3, bool)), "thirds")
        try:
            devices.assert_same_on_every_process(np.array([jax.process_index()]), "ids")
        except RuntimeError as error:
            arrays["disagreement"] = str(error)
    if len(sys.argv) == 3:
        arrays.update(population_run(None))
        arrays.update(population_run((1, 3), prefix="subset_"))
        arrays.update(population_run(None, prefix="fused_", engine=FUSED))
    arrays.update(package=evojax_prune.__file__, device_count=jax.device_count(),
                  process_count=jax.process_count(), writes=len(writes))
    np.savez(out / f"{name}.npz", **arrays)
""").replace("TESTS_DIR", repr(str(REPO / "tests")))


# Packed chunks of 2 heads trained by the fused SGD kernel (Pallas' interpreter on a CPU).
FUSED = {"chunk_size": 2, "step": "fused_sgd"}


def tiny_config(devices_spec=None, **engine):
    return config.preset("quick").replace(
        head={"hidden": 16},
        train={"max_epochs": 6, "patience": 3},
        search={"population_size": 6, "generations": 2},
        engine={"devices": devices_spec, **engine},
    )


def search_run(out_dir=None, devices_spec=None) -> dict:
    result = run_search(embedded.digits(), tiny_config(devices_spec), seed=3, out_dir=out_dir)
    arrays = {"front": result.masks, "objectives": result.objectives,
              "hidden_kernel": result.params.hidden_kernel, "output_kernel": result.params.output_kernel,
              "hypervolumes": np.asarray([row["hypervolume"] for row in result.history])}
    for split in ("validation", "test"):
        arrays.update({f"{split}_{name}": value for name, value in getattr(result, split).items()})
    return arrays


def population_run(devices_spec, prefix="", engine=None):
    digits = embedded.digits()
    masks = np.random.default_rng(0).random((6, digits.num_features)) < 0.4
    run_config = tiny_config(devices_spec, **(engine or {}))
    trained = trainer.train_population(jax.random.key(1), masks, digits.x_train, digits.y_train, run_config)
    placement = sorted(device.id for device in trained.params.hidden_kernel.sharding.device_set)
    scores = evaluate.evaluate_population(
        trained.params, masks, digits.x_val, digits.y_val, digits.ood_val, run_config
    )
    # The Mahalanobis score fits every head on the training split, replicated like the data.
    fitted = evaluate.evaluate_population(
        trained.params, masks, digits.x_val, digits.y_val, digits.ood_val,
        run_config.replace(ood={"score": "mahalanobis"}), train=(digits.x_train, digits.y_train),
    )
    host = devices.to_host((trained, scores, fitted.auroc))
    arrays = {"epochs": host[0].epochs, "final_loss": host[0].final_loss,
              "trained_hidden_kernel": host[0].params.hidden_kernel, "devices": np.asarray(placement),
              "mahalanobis_auroc": host[2]}
    arrays.update({name: getattr(host[1], name) for name in ("accuracy", "mem", "auroc", "fpr95", "aupr_in")})
    return {prefix + name: value for name, value in arrays.items()}


def _env(**extra):
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the subprocesses, computes the one-device baseline meanwhile, then collects them."""
    out = tmp_path_factory.mktemp("sharding")
    port = str(_free_port())
    launch = lambda args, env: subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(out), *args], env=env, cwd=out,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    processes = {
        "sharded": launch(["sharded"], _env(XLA_FLAGS="--xla_force_host_platform_device_count=4")),
        "process0": launch(["process0", "0", port], _env()),
        "process1": launch(["process1", "1", port], _env()),
    }
    baseline = search_run(devices_spec=1)
    baseline.update(population_run(1))
    baseline.update(population_run(1, prefix="fused_", engine=FUSED))
    results = {}
    for name, process in processes.items():
        try:
            log, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in processes.values():
                other.kill()
            pytest.fail(f"{name} did not finish in {TIMEOUT} s")
        assert process.returncode == 0, f"{name} failed:\n{log[-4000:]}"
        with np.load(out / f"{name}.npz") as archive:
            results[name] = {key: archive[key] for key in archive.files}
    return baseline, results, out


def _assert_same(actual: dict, expected: dict, names):
    for name in names:
        if name.removeprefix("validation_").removeprefix("test_").removeprefix("subset_") in ULP_METRICS:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


SEARCH_KEYS = ("front", "objectives", "hidden_kernel", "output_kernel", "hypervolumes",
               *(f"{split}_{name}" for split in ("validation", "test")
                 for name in ("accuracy", "mem", "auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out",
                              "epochs", "train_loss")))
POPULATION_KEYS = ("epochs", "final_loss", "trained_hidden_kernel", "accuracy", "mem", "auroc", "fpr95",
                   "aupr_in", "mahalanobis_auroc")


def test_subprocesses_run_this_checkout(runs):
    _, results, _ = runs
    for name, arrays in results.items():
        assert Path(str(arrays["package"])).is_relative_to(REPO), name
    assert int(results["sharded"]["device_count"]) == 4
    assert [int(results[f"process{i}"]["device_count"]) for i in (0, 1)] == [2, 2]
    assert [int(results[f"process{i}"]["process_count"]) for i in (0, 1)] == [2, 2]


def test_four_devices_train_and_score_a_population_of_six_as_one_does(runs):
    baseline, results, _ = runs
    sharded = results["sharded"]
    _assert_same(sharded, baseline, POPULATION_KEYS)
    assert sharded["epochs"].shape == (6,)  # the padding to 8 never shows
    # Devices 1 and 3 of the four, chosen by position, hold the heads and give the same results.
    np.testing.assert_array_equal(sharded["subset_devices"], [1, 3])
    subset = {name: sharded[f"subset_{name}"] for name in POPULATION_KEYS}
    _assert_same(subset, baseline, POPULATION_KEYS)


def test_four_devices_train_packed_fused_chunks_as_one_does(runs):
    """The fused kernel under shard_map: 2 heads per device against chunks of 2 on one device.

    Chunks hold other heads on 4 devices than on 1, so products of other shapes may
    round differently: close, not bit-equal.
    """
    baseline, results, _ = runs
    sharded = results["sharded"]
    np.testing.assert_array_equal(sharded["fused_epochs"], baseline["fused_epochs"])
    np.testing.assert_array_equal(sharded["fused_mem"], baseline["fused_mem"])
    for name in ("final_loss", "trained_hidden_kernel", "accuracy", "auroc"):
        np.testing.assert_allclose(sharded[f"fused_{name}"], baseline[f"fused_{name}"], rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    # And the fused heads are the heads XLA trains one at a time.
    np.testing.assert_allclose(baseline["fused_final_loss"], baseline["final_loss"], rtol=1e-4)


def test_four_devices_find_the_front_of_one(runs):
    baseline, results, _ = runs
    _assert_same(results["sharded"], baseline, SEARCH_KEYS)


def test_two_processes_find_the_front_of_one_and_process_0_alone_writes(runs):
    baseline, results, out = runs
    for name in ("process0", "process1"):
        _assert_same(results[name], baseline, SEARCH_KEYS)
    assert int(results["process0"]["writes"]) > 0 and int(results["process1"]["writes"]) == 0
    assert "ids differ between processes: process 0 disagrees with process(es) [1]" in str(
        results["process0"]["disagreement"])
    with np.load(out / "run" / "pareto.npz") as archive:
        np.testing.assert_array_equal(archive["masks"], baseline["front"])


@pytest.mark.parametrize(
    "spec, canonical",
    [(None, None), ("all", None), ("", None), (2, 2), ("2", 2), ("0,2", (0, 2)), ("1,", (1,)),
     ([3, 0], (3, 0))],
)
def test_device_specs_have_one_canonical_form(spec, canonical):
    assert config.canonical_devices(spec) == canonical
    assert config.EngineConfig(devices=spec).devices == canonical


@pytest.mark.parametrize("spec, message", [
    (0, "at least 1"), ("two", "expected 'all', a count"), ("0,0", "distinct"), ([-1], "non-negative"),
    ("0;1", "expected 'all'"), (True, "expected None"),
])
def test_bad_device_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        config.canonical_devices(spec)
    with pytest.raises(ValueError, match=r"EngineConfig\.devices"):
        config.EngineConfig(devices=spec)


def test_asking_for_devices_that_do_not_exist_names_what_exists():
    count = jax.device_count()
    assert devices.select_devices(None) == jax.devices()
    assert devices.select_devices(count) == jax.devices()
    with pytest.raises(ValueError, match=rf"asked for {count + 1} devices, but JAX sees {count} cpu device"):
        devices.select_devices(count + 1)
    with pytest.raises(ValueError, match=rf"asked for device positions \[0, {count}\], but JAX sees"):
        devices.select_devices((0, count))


def test_devices_round_trip_through_config_json():
    run = tiny_config((0, 2))
    assert config.RunConfig.from_json(run.to_json()) == run
    assert config.RunConfig.from_json(run.to_json()).engine.devices == (0, 2)
    hash(run)


def test_padding_repeats_the_last_row_and_reports_the_size():
    array = np.arange(12).reshape(6, 2)
    padded, size = devices.pad_population(array, 4)
    assert size == 6 and padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[6:], [[10, 11], [10, 11]])
    same, size = devices.pad_population(array, 3)
    assert same is array and size == 6
    tree, _ = devices.pad_population({"a": array, "b": jax.numpy.ones((6,))}, 4)
    assert tree["a"].shape == (8, 2) and tree["b"].shape == (8,)
    assert [devices.padded_size(n, 4) for n in (1, 4, 5)] == [4, 4, 8]


def test_one_process_initializes_nothing(monkeypatch):
    for name in (devices.COORDINATOR_ENV, devices.NUM_PROCESSES_ENV, devices.PROCESS_ID_ENV,
                 "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert devices.initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert devices.initialize_distributed() is False
    with pytest.raises(ValueError, match="need all three"):
        devices.initialize_distributed(coordinator_address="localhost:1234")
    with pytest.raises(ValueError, match="process id must lie in"):
        devices.initialize_distributed("localhost:1234", num_processes=2, process_id=2)
    monkeypatch.setenv(devices.NUM_PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match="EVOJAX_PRUNE_NUM_PROCESSES must be int"):
        devices.initialize_distributed()


@pytest.mark.parametrize("address", ["localhost", "localhost:", ":1234", "localhost:http", "host:70000"])
def test_a_distributed_coordinator_address_not_host_port_is_refused_before_jax_starts(monkeypatch, address):
    """Issue 33 (9): a coordinator address without a port reached jax.distributed (an IndexError)."""
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: pytest.fail("initialized"))
    with pytest.raises(ValueError, match=f"coordinator_address '{address}': expected HOST:PORT"):
        devices.initialize_distributed(address, num_processes=2, process_id=0)
    monkeypatch.setenv(devices.COORDINATOR_ENV, address)
    with pytest.raises(ValueError, match=f"{devices.COORDINATOR_ENV} '{address}': expected HOST:PORT"):
        devices.initialize_distributed(num_processes=2, process_id=0)


@pytest.mark.parametrize("arguments, message", [
    (["--devices", "7"], "asked for 7 devices, but JAX sees 1 cpu device"),
    (["--devices", "0,x"], "expected 'all', a count"),
    (["--process-id", "0"], "need all three"),
    # Issue 33 (9): no port was an internal IndexError (exit 1).
    (["--coordinator-address", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator-address 'localhost': expected HOST:PORT"),
])
def test_cli_device_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, arguments, message):
    if jax.device_count() != 1:
        pytest.skip("the message names this process's single CPU device")
    assert cli.main(["run", *arguments, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_run_may_resume_on_other_devices_and_with_another_engine():
    from evojax_prune.search.loop import _without_engine

    one, four = tiny_config(1).to_dict(), tiny_config(4, chunk_size=3, step="xla").to_dict()
    assert one != four and _without_engine(one) == _without_engine(four)
    assert _without_engine(one) != _without_engine(tiny_config().replace(head={"hidden": 8}).to_dict())
    # A config.json written before the engine section: its engine fields sat in "train".
    older = tiny_config().to_dict()
    del older["engine"]
    older["train"].update(chunk_size=None, memory_budget_mb=2048.0, devices=None, fused_update=None)
    assert _without_engine(older) == _without_engine(one)
    assert config.RunConfig.from_dict(older) == tiny_config()
