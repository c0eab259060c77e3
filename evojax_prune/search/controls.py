"""How a search is run, apart from what it searches: when to stop early, and whom to tell.

``RunConfig`` fixes the result (resume refuses a different one); run controls
do not: a run stopped by its time budget resumes under a larger budget, or
none, and reaches the front of a run that never stopped (``stopping.py``).
So they travel apart from the configuration, as one small value passed to
``run_search`` / ``run_searches``; config.json records the stopping rules of
each session (``stopping``), never the callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
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
        (the dict ``history.jsonl`` holds; with several runs it carries ``run``).
        None: nothing is called.
      progress: show what ``evojax-prune run`` shows on stderr: a bar with the
        ETA and a line per generation (``search.progress``), beside ``on_generation``.
    """

    time_budget: float | None = None
    hv_patience: int | None = None
    on_generation: GenerationCallback | None = None
    progress: bool = False

    def __post_init__(self):
        self.stopping  # noqa: B018 -- validates the budget and the patience, naming the bad one
        if self.on_generation is not None and not callable(self.on_generation):
            raise TypeError(f"on_generation must be callable, got {type(self.on_generation).__name__}")
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}")

    @property
    def stopping(self) -> Stopping:
        """The stopping rules alone (what config.json records)."""
        return Stopping(self.time_budget, self.hv_patience)


@contextlib.contextmanager
def showing_progress(controls: RunControls, generations: int, runs: int = 1) -> Iterator[RunControls]:
    """``controls`` whose callback also drives a progress bar while the block runs, if ``progress``."""
    if not controls.progress:
        yield controls
        return
    from evojax_prune.search.progress import SearchProgress

    with SearchProgress(generations, runs=runs) as bar:
        given = controls.on_generation

        def both(record: dict[str, Any]) -> None:
            bar.update(record)
            if given is not None:
                given(record)

        yield dataclasses.replace(controls, on_generation=both, progress=False)
