"""When a search stops before its planned generations: a time budget, a hypervolume patience.

These are run controls, not configuration. ``RunConfig.search`` says what is
searched (the population, the operators, ``max_features``) and resume refuses
a different one; a time budget or a patience only says how long to keep
going, and every generation computes the same thing under any of them. So a
run stopped by its budget is resumed with a larger budget, or none, and
reaches exactly the front of a run that never stopped.

The decision is taken on the host, once per generation, after its history
record and checkpoint: a stopped run is a checkpointed run, and its final
front is written as a finished run's is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# Why a search stopped (summary.json's ``stopping.reason``).
GENERATIONS = "generations"  # it ran every planned generation
TIME_BUDGET = "time_budget"
HV_PATIENCE = "hv_patience"
REASONS = (GENERATIONS, TIME_BUDGET, HV_PATIENCE)


@dataclasses.dataclass(frozen=True)
class Stopping:
    """Run controls: stop a search before ``SearchConfig.generations``.

    Attributes:
      time_budget: seconds; the search stops after the first generation that
        ends past it. Elapsed time counts from the run's start, and a resumed
        run counts its earlier time (the checkpoint records it). None: no budget.
      hv_patience: generations; the search stops once the front's hypervolume
        (``history[g]["hypervolume"]``) has not exceeded its best so far for
        this many generations. None: no patience.
    """

    time_budget: float | None = None
    hv_patience: int | None = None

    def __post_init__(self):
        budget = self.time_budget
        if budget is not None and not (
            isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
            and budget > 0
        ):
            raise ValueError(f"time budget must be a number of seconds > 0, got {budget!r}")
        patience = self.hv_patience
        if patience is not None and not (
            isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1
        ):
            raise ValueError(f"hv patience must be an integer >= 1 (generations), got {patience!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def reason(self, history: list[dict[str, Any]], elapsed: float) -> str | None:
        """Why to stop after the last generation of ``history``, or None to go on.

        Args:
          history: the run's records, generation 0 first (each with ``hypervolume``).
          elapsed: seconds since the run started, earlier sessions included.

        Returns:
          ``TIME_BUDGET``, ``HV_PATIENCE`` or None. The budget is tested first:
          when both hold, the budget is what the run ran out of.
        """
        if self.time_budget is not None and elapsed > self.time_budget:
            return TIME_BUDGET
        if self.hv_patience is not None and stalled_generations(history) >= self.hv_patience:
            return HV_PATIENCE
        return None


def stalled_generations(history: list[dict[str, Any]]) -> int:
    """Generations since the hypervolume last exceeded its best so far (0: it did at the last one).

    Generation 0 sets the first best. "Exceeded" is strict: an equal value is
    no improvement (the values are exact functions of the cached metrics, so
    an unchanged front gives the same float).
    """
    best, since = -math.inf, 0
    for record in history:
        if record["hypervolume"] > best:
            best, since = record["hypervolume"], 0
        else:
            since += 1
    return since


def summary(reason: str | None, stopping: Stopping, history: list[dict[str, Any]], planned: int,
            elapsed: float) -> dict[str, Any]:
    """summary.json's ``stopping`` record: why the run stopped, where, and the controls in force.

    Args:
      reason: what ``Stopping.reason`` said, None when the loop ran out of generations.
      stopping: the controls of the session that ended the run.
      history: the run's records.
      planned: ``SearchConfig.generations``.
      elapsed: seconds since the run started when it stopped, earlier sessions included.
    """
    return {
        "reason": reason or GENERATIONS,
        "generation": history[-1]["generation"],
        "planned_generations": planned,
        "elapsed_seconds": elapsed,
        **stopping.to_dict(),
    }
