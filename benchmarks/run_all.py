"""Run every benchmark at one size and render their results as a Markdown table.

    python benchmarks/run_all.py --size cpu                 # what this 2-core CPU can do in ~15 min
    python benchmarks/run_all.py --size gpu --out-dir benchmarks/results/gpu-h100
    python benchmarks/run_all.py --render-only              # rebuild the tables from the JSON files

Each benchmark runs in its own process (its memory and compilation caches do not
leak into the next) and writes one JSON with the device, package versions and
date under ``--out-dir``. The table goes to ``<out-dir>/README.md`` and, for
the default results folder, between the ``bench`` markers of the top-level
README.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")

SIZES = {
    "cpu": {
        "trainer_throughput": ["--populations", "1", "4", "16", "--epochs", "2",
                               "--keras-heads", "4"],
        "odin_metrics": [],
        "nsga2_selection": [],
        "generation_profile": ["--populations", "32", "64", "--epochs", "2", "--paper-epochs", "2"],
    },
    # Sized for under 8 minutes on one H100, the most important first; (b) trains a
    # sample of 64 heads one at a time (its rate per head-epoch does not depend on P).
    "gpu": {
        "trainer_throughput": ["--populations", "256", "1024", "1", "16", "--epochs", "5",
                               "--keras-heads", "2", "--one-at-a-time-heads", "64"],
        "generation_profile": ["--populations", "32", "256", "2048", "--epochs", "5",
                               "--paper-epochs", "10", "--paper-search"],
        "odin_metrics": [],
        "nsga2_selection": [],
    },
    # Seconds, not minutes: checks that every benchmark runs and renders (tests/test_benchmarks.py).
    "smoke": {
        "trainer_throughput": ["--populations", "2", "--epochs", "1", "--keras-heads", "1",
                               "--one-at-a-time-heads", "1", "--repeats", "1"],
        "generation_profile": ["--populations", "4", "--epochs", "1", "--skip-paper"],
        "odin_metrics": ["--population", "8", "--repeats", "1", "--evaluate-repeats", "1"],
        "nsga2_selection": ["--sizes", "64"],
    },
}
# Seconds each benchmark may take at a size before it is stopped (its JSON keeps what it
# finished: the benchmarks write after every part); None: no limit.
TIME_LIMITS = {
    "cpu": dict.fromkeys(SIZES["cpu"]),
    "smoke": dict.fromkeys(SIZES["cpu"]),
    "gpu": {"trainer_throughput": 170, "generation_profile": 210, "odin_metrics": 45, "nsga2_selection": 45},
}


def run(size: str, out_dir: Path, only: list[str] | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arguments in SIZES[size].items():
        if only and name not in only:
            continue
        out = out_dir / f"{name}_{size}.json"
        print(f"== {name} ({size}) -> {out}", flush=True)
        started = time.perf_counter()
        command = [sys.executable, str(HERE / f"{name}.py"), *arguments, "--out", str(out)]
        try:
            status = f"exit {subprocess.run(command, timeout=TIME_LIMITS[size][name]).returncode}"
        except subprocess.TimeoutExpired:
            status = f"stopped at its {TIME_LIMITS[size][name]} s limit (its JSON holds what it finished)"
        print(f"== {name}: {status} after {time.perf_counter() - started:.0f} s", flush=True)


def _load(out_dir: Path, name: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out_dir.glob(f"{name}_*.json"))]


def _device(result: dict) -> str:
    device = result.get("device_kind", result.get("device"))
    return device.get("device_kind", str(device)) if isinstance(device, dict) else str(device)


def _fmt(value, digits=2):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def render(out_dir: Path) -> str:
    lines = []
    for result in _load(out_dir, "trainer_throughput"):
        lines += [
            f"**Population trainer** ({_device(result)}, {result['date'][:10]}; RPS-shaped "
            f"features N=2520, D=2048, H=512, C=3, {result['setup']['epochs']} epochs; matmul peak "
            f"{_fmt(result['matmul_peak_gflops'], 1)} GFLOP/s and memory bandwidth "
            f"{_fmt(result.get('memory_bandwidth_gbs'), 1)} GB/s measured in the same run)",
            "",
            "| population | (a) population trainer, head-epochs/s | (b) one at a time | (a)/(b) | "
            "(a)/(c) Keras, per-model compile counted | (a)/(c) Keras steady | kept features | "
            "GFLOP/s on kept features | roofline bound | fraction of roofline |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["rows"]:
            ours = row["population_trainer"]
            single = row.get("one_at_a_time") or {}
            sampled = single.get("heads", row["population"]) < row["population"]
            bound = ours.get("roofline")
            single_rate = _fmt(single.get("head_epochs_per_s"))
            if sampled:
                single_rate += f" ({single['heads']} heads)"
            bound_text = f"{bound['bound_s']:.3g} s, {bound['binding']}" if bound else "n/a"
            lines.append(
                f"| {row['population']} | {_fmt(ours['head_epochs_per_s'])} | {single_rate} | "
                f"{_fmt(row.get('ratio_a_over_b'))} | {_fmt(row.get('ratio_a_over_c'))} | "
                f"{_fmt(row.get('ratio_a_over_c_steady'))} | {_fmt(row.get('mean_kept_fraction'))} | "
                f"{_fmt(ours['kept_gflops'], 1)} | {bound_text} | "
                f"{_fmt(bound['fraction_of_roofline']) if bound else 'n/a'} |"
            )
        lines.append("")
    for result in _load(out_dir, "odin_metrics"):
        odin = result["odin_auroc"]
        lines += [
            f"**ODIN + AUROC** ({_device(result)}, {result['date'][:10]}): P={odin['population']} heads, "
            f"{odin['num_ind']} InD + {odin['num_ood']} OoD scores each: "
            f"{_fmt(odin['ours_auroc_median_ms'], 1)} ms jitted vs "
            f"{_fmt(odin['sklearn_loop_median_ms'], 0)} ms for a loop over scikit-learn: "
            f"**{_fmt(odin['speedup_sklearn_loop_over_ours_auroc'], 1)}x**.",
            "",
        ]
    for result in _load(out_dir, "nsga2_selection"):
        lines += [
            f"**NSGA-II survival step** ({_device(result)}, {result['date'][:10]}; 3 objectives, "
            "rank + crowding + selection of half)",
            "",
            "| N | ours (ms, median) | pymoo RankAndCrowding (ms) | ours / pymoo |",
            "| --- | --- | --- | --- |",
        ]
        for row in result["results"]:
            lines.append(
                f"| {row['num_points']:,} | {_fmt(row['ours_median_ms'], 1)} | "
                f"{_fmt(row['pymoo_median_ms'], 1)} | {_fmt(row['ratio_ours_over_pymoo'])} |"
            )
        lines.append("")
    for result in _load(out_dir, "generation_profile"):
        lines += [
            f"**One generation, end to end** ({_device(result)}, {result['date'][:10]}; "
            f"RPS-shaped features, {result['rows'][0]['epochs']} epochs per head)",
            "",
            "| population | training s | scoring s | selection s | host s | heads/s | peak host RSS GB |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["rows"]:
            seconds = row["seconds"]
            lines.append(
                f"| {row['population']} | {_fmt(seconds['training'])} | {_fmt(seconds['scoring'])} | "
                f"{_fmt(seconds['selection'], 3)} | {_fmt(seconds['host'], 3)} | "
                f"{_fmt(row['heads_per_second'], 1)} | "
                f"{_fmt(row['memory']['host_peak_rss_bytes'] / 1e9)} |"
            )
        capacity = result.get("capacity") or {}
        if capacity.get("largest_population_with_all_params_resident"):
            lines += [
                "",
                f"Largest population whose parameters all stay on the device at once (training is chunked, "
                f"so only this bounds P): {capacity['largest_population_with_all_params_resident']:,} "
                f"({capacity['bytes_per_training_head'] / 2**20:.1f} MiB per training head, "
                f"{capacity['device_memory_limit_bytes'] / 2**30:.1f} GiB usable).",
            ]
        paper = result.get("paper_run")
        if paper:
            lines += [
                "",
                f"The authors' whole RPS run (200 evaluations, their protocol) measured at "
                f"{paper['measured_epochs']} epochs per head and scaled to the 600-epoch limit (an upper "
                f"bound): {_fmt(paper['generational_seconds_at_600_epochs'], 0)} s generational, "
                f"{_fmt(paper['steady_state_seconds_at_600_epochs'], 0)} s in their steady-state order, "
                f"against their {_fmt(paper['authors_v100_seconds'], 0)} s on a V100.",
            ]
        search = result.get("paper_search")
        if search:
            warm = search["warm_seconds"]
            last = search["runs"][-1]
            lines += [
                "",
                f"The authors' whole budget run for real, as one search ({search['schedule']}; "
                f"{search['protocol']}): **{_fmt(search['cold_seconds'], 1)} s** including XLA's "
                f"compilation" + (f", {_fmt(warm, 1)} s compiled" if warm else "") +
                f", against their {_fmt(search['authors_v100_seconds'], 0)} s on a V100 "
                f"(front heads trained {_fmt(last['front_mean_epochs'], 0)} epochs on average; "
                f"training {_fmt(last['train_seconds'], 1)} s, scoring {_fmt(last['score_seconds'], 2)} s).",
            ]
        lines.append("")
    return "\n".join(lines)


def write_tables(out_dir: Path) -> str:
    """``<out_dir>/README.md``; for the default folder also the top-level README's bench section.

    The top-level README shows this CPU's results, then each ``gpu-*`` folder's
    (committed by ``gpu.sh`` runs), each under its own heading.
    """
    table = render(out_dir)
    header = "# Benchmark results\n\nGenerated by `benchmarks/run_all.py`.\n\n"
    (out_dir / "README.md").write_text(header + table)
    if out_dir.resolve() == RESULTS.resolve() and README.exists():
        sections = [f"#### This project's 2-core CPU\n\n{table}"]
        for folder in sorted(RESULTS.glob("gpu-*")):
            gpu_table = render(folder)
            (folder / "README.md").write_text(header + gpu_table)
            sections.append(f"#### `{folder.relative_to(HERE.parent)}`\n\n{gpu_table}")
        text = README.read_text()
        start, end = MARKERS
        if start in text and end in text:
            before, rest = text.split(start, 1)
            after = rest.split(end, 1)[1]
            README.write_text(f"{before}{start}\n" + "\n".join(sections) + f"\n{end}{after}")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", choices=sorted(SIZES["cpu"]), help="run just these")
    parser.add_argument("--render-only", action="store_true", help="only rebuild the tables")
    args = parser.parse_args(argv)
    if not args.render_only:
        run(args.size, args.out_dir, args.only)
    print(write_tables(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
