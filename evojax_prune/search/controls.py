"""How a search is run, apart from what it searches: when to stop early, and whom to tell.

``RunConfig`` fixes the result (resume refuses a different one); run controls
do not: a run stopped by its time budget resumes under a larger budget, or
none, and reaches the front of a run that never stopped (``stopping.py``).
So they travel apart from the configuration, as one small value passed to
``run_search`` / ``run_searches``; config.json records the stopping rules of
each session (``stopping``), never the callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from evojax_prune.search.stopping import Stopping

GenerationCallback = Callable[[dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class RunControls:
    """Run controls of a search.

    Attributes:
      time_budget: seconds; stop after the first generation that ends past it,
        a resumed run counting its earlier time (``Stopping``). None: no budget.
      hv_patience: generations; stop once the front's hypervolume has not
        improved for this many. None: no patience.
      on_generation: called on the host with each generation's history record
        (the dict ``history.jsonl`` holds; with several runs it carries ``run``),
        e.g. a progress bar's update. None: silent.
    """

    time_budget: float | None = None
    hv_patience: int | None = None
    on_generation: GenerationCallback | None = None

    def __post_init__(self):
        self.stopping  # noqa: B018 -- validates the budget and the patience, naming the bad one
        if self.on_generation is not None and not callable(self.on_generation):
            raise TypeError(f"on_generation must be callable, got {type(self.on_generation).__name__}")

    @property
    def stopping(self) -> Stopping:
        """The stopping rules alone (what config.json records)."""
        return Stopping(self.time_budget, self.hv_patience)
