"""The benchmark suite runs, checks its own results, and the README shows what the JSON holds."""

import json
import os
import subprocess
import sys
from pathlib import Path

# The benchmark scripts import each other as top-level modules: pyproject.toml puts benchmarks/
# on pytest's pythonpath, as running a script puts its own folder on sys.path.
import common
import cpu_step_layouts
import numpy as np
import pytest
import run_all
import step_profile
import trainer_throughput

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ENGINE = '{"tile_sum": "gather"}'


def test_roofline_counts_the_weight_traffic_of_every_step():
    kept = np.array([100, 300])
    hidden, classes, samples = trainer_throughput.HIDDEN, trainer_throughput.NUM_CLASSES, 2520
    steps = -(-samples // 32)  # 79
    per_head = [4 * (steps * 4 * (k * hidden + hidden * classes + classes) + samples * k) for k in kept]
    np.testing.assert_array_equal(trainer_throughput.bytes_per_epoch(kept, 32), per_head)
    # 1 GFLOP at 1000 GFLOP/s (1 ms) against 1 GB at 500 GB/s (2 ms): memory-bound, 2 ms.
    bound = trainer_throughput.roofline(1e9, 1e9, 1000.0, 500.0, seconds=0.004)
    assert bound["binding"] == "memory"
    assert bound["bound_s"] == pytest.approx(2e-3)
    assert bound["fraction_of_roofline"] == pytest.approx(0.5)
    assert trainer_throughput.roofline(4e9, 1e9, 1000.0, 500.0, seconds=0.004)["binding"] == "compute"


def test_readme_shows_the_committed_results():
    readme = run_all.README.read_text()
    start, end = run_all.MARKERS
    assert readme.split(start, 1)[1].split(end, 1)[0].strip() == run_all.readme_section().strip(), (
        "README's benchmark section is stale: run `python benchmarks/run_all.py --render-only`"
    )


def test_smoke_suite_runs_checks_and_renders(tmp_path):
    # As gpu.sh runs it: with the engine settings of the fastest step variant.
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_all.py"), "--size", "smoke", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, common.ENGINE_VARIABLE: ENGINE},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("*.json")}
    assert sorted(results) == sorted(f"{name}_smoke" for name in run_all.SIZES["smoke"])
    for name, result in results.items():
        assert result.get("device_kind") or result.get("device"), name
        assert result["engine"] == {"tile_sum": "gather"}, name
        assert "trainer_settings" not in result, name

    trainer = results["trainer_throughput_smoke"]
    row = trainer["rows"][0]
    # The settings reached the trainer: on a CPU the tile sum's auto is the scatter.
    for plan in (row["plan"], row["one_at_a_time"]["plan"]):
        assert plan["platform"] == "cpu" and plan["tile_sum"] == "gather", plan
    assert row["plan"]["population"] == 2 and row["chunk_size"] == row["plan"]["chunk_size"] == 1
    assert row["plan"]["kernel_transposed"]  # chunks of one head on a CPU: (H, c)
    assert row["one_at_a_time"]["plan"]["population"] == 1
    assert trainer["memory_bandwidth_gbs"] > 0 and trainer["matmul_peak_gflops"] > 0
    assert 0 < row["population_trainer"]["roofline"]["fraction_of_roofline"]
    assert row["one_at_a_time"]["heads"] == 1 and row["ratio_a_over_b"] > 0
    assert row["step_products_gflops"] > 0
    assert trainer["keras"]["heads"] == 1

    selection = results["nsga2_selection_smoke"]["results"][0]
    assert selection["ranks_identical_to_pymoo"] and selection["same_surviving_ranks_as_pymoo"]
    assert sorted(selection["rank_alone_by_method"]) == ["chain", "peel"]
    assert all(alone["identical_to_pymoo"] for alone in selection["rank_alone_by_method"].values())

    profile = results["generation_profile_smoke"]["rows"][0]
    assert profile["population"] == 4 and profile["seconds"]["training"] > 0
    assert profile["plan"]["tile_sum"] == "gather" and profile["plan"]["population"] == 4
    assert profile["train_chunk_size"] == profile["plan"]["chunk_size"] == 1
    assert profile["memory"]["host_rss_growth_bytes"] >= 0
    capacity = results["generation_profile_smoke"]["capacity"]
    # A CPU reports no device memory limit: the host's available memory bounds P there.
    assert capacity["memory_limit_source"] == "host memory available"
    assert capacity["largest_population_by_model"] > 4

    table = (tmp_path / "README.md").read_text()
    for heading in ("Population trainer", "ODIN + AUROC", "NSGA-II survival step", "One generation"):
        assert heading in table
    assert "Engine: `tile_sum = 'gather'`." in table and "Trainer settings" not in table
    assert "Largest population that fits" in table and "host memory available" in table


def test_growth_line_compares_the_smallest_and_largest_population():
    def row(population, seconds, growth_mib):
        return {"population": population, "seconds": {"total": seconds},
                "memory": {"host_rss_growth_bytes": growth_mib * 2**20, "device_peak_bytes": None}}

    [blank, line] = run_all._growth_lines([row(128, 40.0, 600), row(32, 8.0, 120)])
    assert blank == ""
    assert line.startswith("Growth from P = 32 to 128: 250.0 and 312.5 ms per head per generation")
    assert "(time x5.00 for population x4.00)" in line
    assert "host memory 5.0 MiB per added head from P = 32 to 128" in line and "device" not in line
    assert run_all._growth_lines([row(32, 8.0, 120)]) == []
    # Three populations: the memory growth of each step, in order of population.
    [_, line] = run_all._growth_lines([row(512, 160.0, 1752), row(32, 8.0, 120), row(128, 40.0, 600)])
    assert "5.0 MiB per added head from P = 32 to 128, 3.0 MiB per added head from P = 128 to 512" in line


def test_capacity_from_measured_growth_and_from_the_model():
    def row(population, device_peak_gib):
        return {"population": population, "memory": {"device_peak_bytes": device_peak_gib * 2**30}}

    capacity = {"device_memory_limit_bytes": 60 * 2**30, "memory_limit_source": "device memory limit",
                "largest_population_by_model": 12_000, "training_chunk_size": 32,
                "bytes_per_training_head": 24.5 * 2**20, "params_bytes_per_head": 4 * 2**20}
    # 1 GiB at 32 heads, 9 GiB at 2,080: 4 MiB per added head, and 51 GiB left above 2,080.
    [blank, line] = run_all._capacity_lines([row(2080, 9), row(32, 1)], capacity)
    assert blank == ""
    assert line.startswith("Largest population that fits (60.0 GiB device memory limit): ")
    assert (f"about {2080 + 51 * 256:,} from the memory growth measured above "
            "(4.0 MiB per head from P = 32 to 2080)") in line
    assert "12,000 by the memory model (one training chunk of 32 heads at 24.5 MiB each" in line
    assert run_all._capacity_lines([row(32, 1)], {}) == []
    # With a third, smaller population, the growth per head is taken between the two largest:
    # past one scoring chunk, a head no longer adds scoring temporaries.
    [_, line] = run_all._capacity_lines([row(2080, 9), row(32, 1), row(8, 0.5)], capacity)
    assert "(4.0 MiB per head from P = 32 to 2080)" in line
    [_, line] = run_all._capacity_lines([row(2080, 9), row(1056, 6), row(32, 1)], capacity)
    assert (f"about {2080 + 51 * 1024 // 3:,} from the memory growth measured above "
            "(3.0 MiB per head from P = 1056 to 2080)") in line


def run_benchmark(script: str, out: Path, *arguments: str) -> dict:
    """Runs ``benchmarks/<script>`` with ``arguments`` and ``--out out``; returns its JSON."""
    command = [sys.executable, str(BENCHMARKS / script), *arguments, "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


def test_step_profile_traces_every_variant_and_they_agree(tmp_path):
    result = run_benchmark("step_profile.py", tmp_path / "step.json",
                           "--population", "4", "--epochs", "1", "--chunk-size", "4")
    names = [layout["layout"] for layout in result["layouts"]]
    assert names == ["packed, fused SGD kernel", "packed, XLA's SGD",
                     "packed, fused SGD kernel, command buffers on",
                     "packed, fused SGD kernel, tiles summed by XLA's scatter",
                     "packed, fused SGD kernel, tiles summed by gathering"]
    assert names == list(step_profile.VARIANTS)
    assert result["engine"] == {} and result["chunk_size"] == 4

    def plans(name):
        return [layout["plan"][name] for layout in result["layouts"]]

    assert plans("tile_sum") == ["scatter"] * 4 + ["gather"]
    assert plans("command_buffers") == [False, False, True, False, False]
    assert plans("step") == ["xla"] * 5  # the fused kernel is for GPUs unless asked for
    assert plans("chunk_size") == [4] * 5 and plans("platform") == ["cpu"] * 5
    for layout in result["layouts"]:
        assert "error" not in layout, layout.get("error")
        assert layout["engine"] == step_profile.VARIANTS[layout["layout"]]
        assert not layout["plan"]["layouts"][0]["per_head"]  # packed tiles
        assert layout.get("largest_loss_difference_from_first", 0.0) < 1e-5
        assert layout["microseconds_per_step"] > 0
        operations = layout["trace"]["operations"]
        assert operations and all(row["total_us"] >= 0 for row in operations)
        assert not any(row["name"].startswith("$") for row in operations)  # XLA's work, not Python frames


def test_fused_sgd_step_benchmark_runs_both_variants(tmp_path):
    result = run_benchmark("fused_sgd_step.py", tmp_path / "fused.json",
                           "--tiles", "4", "--steps", "2", "--repeats", "1")
    assert [row["variant"] for row in result["rows"]] == ["xla", "fused"]
    assert all(row["microseconds_per_step"] > 0 for row in result["rows"]), result["rows"]
    assert not result["compiled"] and result["fastest"]["variant"] == "fused"


def test_runs_lockstep_times_both_sides_and_checks_the_fronts(tmp_path):
    result = run_benchmark("runs_lockstep.py", tmp_path / "runs.json", "--runs", "2", "--generations", "1",
                           "--population", "4", "--repeats", "1")
    assert [repeat["first"] for repeat in result["repeats"]] == ["lockstep"]
    assert result["fronts_equal"] and result["seeds"] == [0, 1]
    assert all(r["lockstep_seconds"] > 0 and r["one_after_another_seconds"] > 0 for r in result["repeats"])
    assert result["training_plan"]["population"] == 2 * 5


def test_neuron_gathering_trains_both_ways_and_they_agree(tmp_path):
    result = run_benchmark("neuron_gathering.py", tmp_path / "neurons.json", "--heads", "2", "--epochs", "1",
                           "--repeats", "1", "--modes", "hidden1")
    (row,) = result["rows"]
    assert row["plans"]["narrow"]["neurons"] and not row["plans"]["full_width"]["neurons"]
    assert row["max_weight_difference"] < 1e-5 and row["ratio"] > 0


def test_keras_semantics_times_both_trainings_and_records_their_plans(tmp_path):
    result = run_benchmark("keras_semantics.py", tmp_path / "keras.json", "--heads", "2", "--epochs", "1",
                           "--repeats", "1")
    assert result["paper_training"]["lr_decay"] == 1e-6 and result["ratio"] > 0
    assert all(len(values) == 1 for values in result["seconds"].values())
    # Decay 1e-6 and clipping at 1e-7 over one epoch: nearly the same weights, not the same.
    assert 0 < result["max_weight_difference"] < 1e-3


def test_cpu_step_layouts_agree_and_time_the_trainer_both_ways(tmp_path):
    result = run_benchmark("cpu_step_layouts.py", tmp_path / "layouts.json", "--rows", "48", "--steps", "5",
                           "--repeats", "1", "--trainer-populations", "1", "--trainer-epochs", "1")
    # The step layouts compute the same weights.
    assert [row["variant"] for row in result["results"]] == list(cpu_step_layouts.VARIANTS)
    for row in result["results"]:
        assert row["us_per_step"] > 0 and row["max_abs_difference_from_first"] < 1e-6, row
    [row] = result["trainer"]
    assert row["population"] == 1 and set(row["seconds"]) == set(cpu_step_layouts.TRAINER_WAYS)
    assert row["engine"] == cpu_step_layouts.TRAINER_WAYS
    plans = row["plans"]
    assert plans["as the trainer"]["kernel_transposed"] and len(plans["as the trainer"]["layouts"]) == 16
    assert not plans["kernel (c, H)"]["kernel_transposed"] and len(plans["kernel (c, H)"]["layouts"]) == 16
    assert plans["8 capacity levels for one head"]["kernel_transposed"]
    assert len(plans["8 capacity levels for one head"]["layouts"]) == 8
    before = plans["both: the trainer before"]
    assert not before["kernel_transposed"] and len(before["layouts"]) == 8
    assert row["speedup_of_the_trainer"]["as the trainer"] == 1.0
    assert all(seconds > 0 for seconds in row["seconds"].values()), row
    assert all(difference < 1e-5 for difference in row["max_abs_kernel_difference"].values()), row


def test_cpu_step_layouts_update_is_optax_sgd_with_nesterov():
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(0)
    kernel, momentum, gradient = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(3))
    optimizer = optax.sgd(cpu_step_layouts.LEARNING_RATE, momentum=cpu_step_layouts.MOMENTUM, nesterov=True)
    state = optimizer.init(kernel)
    state = (optax.TraceState(trace=momentum), *state[1:])
    updates, state = optimizer.update(gradient, state, kernel)
    expected_kernel, expected_momentum = optax.apply_updates(kernel, updates), state[0].trace
    for update in (cpu_step_layouts._trainer_update, cpu_step_layouts._update_from_old_momentum):
        new_kernel, new_momentum = update(kernel, momentum, gradient)
        np.testing.assert_allclose(new_kernel, expected_kernel, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new_momentum, expected_momentum, rtol=1e-6, atol=1e-7)


def test_engine_variants_lower_to_their_own_programs():
    """Two engine variants are two plans, two static arguments: two programs, no tricks needed.

    The gather sums a packed chunk's tiles without XLA's scatter; the scatter with it.
    """
    import jax

    from evojax_prune.config import EngineConfig, HeadConfig, TrainConfig
    from evojax_prune.train import plan, trainer

    train_config = TrainConfig(batch_size=8, max_epochs=1)
    masks = np.random.default_rng(0).random((4, 64)) < 0.5

    def scatters(tile_sum):
        training = plan.make_plan(EngineConfig(chunk_size=4, tile_sum=tile_sum), train_config, population=4,
                                  num_features=64, num_classes=3, hidden=8, platform="cpu")
        assert training.packed and training.tile_sum == tile_sum
        traced = trainer.trace_training(
            jax.random.key(0), masks, np.zeros((16, 64), np.float32), np.zeros(16, np.int32), num_classes=3,
            head_config=HeadConfig(hidden=8), train_config=train_config, plan=training)
        return traced.lower().as_text().count("stablehlo.scatter")

    assert scatters("gather") < scatters("scatter")


def test_engine_settings_from_the_environment(monkeypatch):
    """gpu.sh hands the fastest step variant's engine settings to the suite through the environment."""
    from evojax_prune import config as cfg

    monkeypatch.delenv(common.ENGINE_VARIABLE, raising=False)
    assert common.engine_settings() == {} and common.environment()["engine"] == {}
    monkeypatch.setenv(common.ENGINE_VARIABLE, '{"tile_sum": "gather", "devices": [0]}')
    settings = common.engine_settings()
    assert settings == {"tile_sum": "gather", "devices": [0]} and common.environment()["engine"] == settings
    config = common.with_engine(cfg.preset("quick"), {"chunk_size": 2})
    assert (config.engine.tile_sum, config.engine.devices, config.engine.chunk_size) == ("gather", (0,), 2)
    # The benchmark's own settings win over the environment's.
    assert common.with_engine(cfg.preset("quick"), {"tile_sum": "scatter"}).engine.tile_sum == "scatter"
    record = common.plan_record(config, 4, 64, 3)
    assert record["population"] == 4 and record["devices"] == 1 and record["tile_sum"] == "gather"
    assert record["chunk_size"] == 2 and record["platform"] == "cpu"
    for bad, why in (('{"tile_sum": ', "not valid JSON"), ('["heads"]', "must be a JSON object"),
                     ('{"TILE_SUM": "gather"}', r"unknown EngineConfig field\(s\) \['TILE_SUM'\]"),
                     ('{"tile_sum": "sorted"}', "EngineConfig.tile_sum must be")):
        monkeypatch.setenv(common.ENGINE_VARIABLE, bad)
        with pytest.raises(ValueError, match=rf"\$EVOJAX_PRUNE_BENCH_ENGINE.*{why}"):
            common.engine_settings()
    assert common.engine_settings("") == {}


def test_benchmarks_use_the_public_configuration():
    """Variants are engine settings: no benchmark sets attributes of the package or edits sys.path."""
    for script in sorted(BENCHMARKS.glob("*.py")):
        text = script.read_text()
        for banned in ("setattr(", "sys.path.insert", "default_backend", "trainer_settings", "TILE_SUM"):
            if script.name == "run_all.py" and banned == "trainer_settings":
                continue  # renders the committed results recorded before the engine section
            assert banned not in text, (script.name, banned)


def test_fastest_step_variant_must_agree_with_the_first():
    rows = [
        {"layout": "packed, fused SGD kernel", "microseconds_per_step": 259.0},
        {"layout": "packed, XLA's SGD", "microseconds_per_step": 100.0},  # not a candidate
        {"layout": "packed, fused SGD kernel, tiles summed by gathering", "microseconds_per_step": 150.0,
         "largest_loss_difference_from_first": 0.5},  # disagrees: left out
    ]
    assert step_profile.fastest_settings(rows)["variant"] == "packed, fused SGD kernel"
    rows[2]["largest_loss_difference_from_first"] = 1e-5
    assert step_profile.fastest_settings(rows) == {
        "variant": "packed, fused SGD kernel, tiles summed by gathering",
        "settings": {"tile_sum": "gather"}, "microseconds_per_step": 150.0}
    rows[2]["error"] = "Triton failed"
    assert step_profile.fastest_settings(rows)["variant"] == "packed, fused SGD kernel"
    assert step_profile.fastest_settings(rows[1:2]) is None


def test_gpu_script_names_only_existing_variants():
    """A misspelt variant would stop gpu.sh after its first step (on a rare, timed GPU)."""
    import itertools
    import shlex

    script = (BENCHMARKS / "gpu.sh").read_text().replace("\\\n", " ")
    assert "EVOJAX_PRUNE_BENCH_ENGINE" in script and "EVOJAX_PRUNE_BENCH_TRAINER" not in script
    profiles = [line for line in script.splitlines() if "step_profile.py" in line and "--variants" in line]
    assert len(profiles) == 2
    for line in profiles:
        words = shlex.split(line.split("--variants", 1)[1])
        # The names, up to the next option or the end of the command.
        names = list(itertools.takewhile(lambda word: not word.startswith("-") and word != "||", words))
        assert names and set(names) <= set(step_profile.VARIANTS), set(names) - set(step_profile.VARIANTS)
    assert step_profile.CANDIDATES[0] == next(iter(step_profile.VARIANTS))  # the default comes first
    # Every script it runs exists and declares every flag it is given.
    import re

    for script_name, arguments in re.findall(r"\$python benchmarks/(\w+\.py)([^|\n]*)", script):
        source = (BENCHMARKS / script_name).read_text()
        for flag in re.findall(r"(?<!\S)(--[\w-]+)", arguments):
            assert f'"{flag}"' in source, (script_name, flag)
