"""Progress of a search on the terminal: a bar with ETA, a line per generation, the front's table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def generation_line(record: dict[str, Any]) -> str:
    diverged = record.get("diverged", 0)
    run = f"run {record['run']:>2}  " if "run" in record else ""
    return (
        f"{run}gen {record['generation']:>4}  evals {record['evaluations']:>6}  "
        f"front {record['front_size']:>4}  HV {record['hypervolume']:.4f}  "
        f"best acc {record['best_accuracy']:.4f}  min MEM {record['smallest_mem']:.4f}  "
        f"best AUROC {record['best_auroc']:.4f}  "
        f"(train {record['train_seconds']:.1f}s, score {record['score_seconds']:.1f}s, "
        f"select {record['select_seconds']:.2f}s)" + (f"  diverged {diverged}" if diverged else "")
    )


class SearchProgress:
    """A context manager whose ``update(record)`` is ``run_search``'s ``on_generation``.

    With ``runs`` > 1 the bar counts the generations of all runs (records carry their ``run``).
    """

    def __init__(self, generations: int, console: Console | None = None, runs: int = 1):
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("generations"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self.task = self.progress.add_task("search", total=runs * (generations + 1))
        self.done: dict[int, int] = {}  # generations recorded, by run

    def __enter__(self) -> SearchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, record: dict[str, Any]) -> None:
        self.progress.console.print(generation_line(record), highlight=False)
        self.done[record.get("run", 0)] = record["generation"] + 1
        self.progress.update(self.task, completed=sum(self.done.values()))


def runs_table(result) -> Table:
    """Each run's front beside the merged one (``lockstep.RunsResult``)."""
    table = Table(title=f"{len(result.runs)} runs: fronts merged into {len(result.merged_run)} members")
    for column in ("run", "seed", "front", "hypervolume", "best acc val", "best acc test"):
        table.add_column(column, justify="right")
    for index, run in enumerate(result.runs):
        table.add_row(str(index), str(run.seed), str(len(run.masks)), f"{run.hypervolume:.4f}",
                      f"{run.validation['accuracy'].max():.4f}", f"{run.test['accuracy'].max():.4f}")
    merged_val, merged_test = result.metrics("validation"), result.metrics("test")
    table.add_row("merged", "", str(len(result.merged_run)), f"{result.hypervolume:.4f}",
                  f"{merged_val['accuracy'].max():.4f}", f"{merged_test['accuracy'].max():.4f}", style="bold")
    return table


def front_table(result, limit: int = 15) -> Table:
    """The front (best validation accuracy first) beside the all-ones baseline."""
    table = Table(title=f"Pareto front: {len(result.masks)} members (validation / test)")
    kept = "features" if result.config.head.prune == "features" else "neurons"
    for column in ("member", kept, "MEM", "acc val", "acc test", "AUROC val", "AUROC test"):
        table.add_column(column, justify="right")
    base_val, base_test = result.baseline_validation, result.baseline_test
    table.add_row("baseline", str(result.masks.shape[1]), "1.000", f"{base_val['accuracy']:.4f}",
                  f"{base_test['accuracy']:.4f}", f"{base_val['auroc']:.4f}", f"{base_test['auroc']:.4f}",
                  style="dim")
    for member in range(min(limit, len(result.masks))):
        val, test = result.validation, result.test
        table.add_row(str(member), str(int(result.masks[member].sum())), f"{val['mem'][member]:.3f}",
                      f"{val['accuracy'][member]:.4f}", f"{test['accuracy'][member]:.4f}",
                      f"{val['auroc'][member]:.4f}", f"{test['auroc'][member]:.4f}")
    if len(result.masks) > limit:
        table.caption = f"{len(result.masks) - limit} more in pareto.csv"
    return table
