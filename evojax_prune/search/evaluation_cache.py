"""Objectives are a deterministic function of the mask: never train the same mask twice.

``MaskCache`` maps packed masks to the metrics their head earned. Lookups and
inserts are vectorised (sorted byte strings and ``np.searchsorted``), so a
generation's bookkeeping is a few array operations whatever its size.

``TrainedHeads`` keeps the trained heads themselves for the masks a search still
holds (its population), where training left them, so that the final front is
scored with the heads the search trained instead of being trained again.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_prune.result import METRIC_NAMES


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(K, D) bool -> (K,) fixed-width byte strings, one key per mask."""
    packed = np.packbits(np.asarray(masks, bool), axis=1)
    return np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()


def find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``keys`` (K,) are in ``sorted_keys`` (n,): found (K,) bool, and position (K,) where found."""
    position = np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))
    found = sorted_keys[position] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
    return found, position


class MaskCache:
    """Metrics of every mask evaluated so far.

    Attributes:
      keys: (n,) sorted packed masks.
      values: (n, len(METRIC_NAMES)) float64 metrics, in the order of ``keys``.
    """

    def __init__(self, num_features: int, keys: np.ndarray | None = None, values: np.ndarray | None = None):
        self.num_features = num_features
        width = (num_features + 7) // 8
        self.keys = np.zeros((0,), np.dtype((np.void, width))) if keys is None else keys
        self.values = np.zeros((0, len(METRIC_NAMES))) if values is None else values

    def __len__(self) -> int:
        return len(self.keys)

    def masks(self) -> np.ndarray:
        """(n, D) bool: every mask in the cache, in key order (the archive of a search)."""
        raw = self.keys.view(np.uint8).reshape(len(self.keys), -1)
        return np.unpackbits(raw, axis=1, count=self.num_features).astype(bool)

    def lookup(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (found (K,) bool, values (K, metrics)) with NaN rows where not found."""
        found, position = find(self.keys, pack_masks(masks))
        values = np.full((len(found), len(METRIC_NAMES)), np.nan)
        values[found] = self.values[position[found]]
        return found, values

    def insert(self, masks: np.ndarray, values: np.ndarray) -> None:
        """Adds masks not seen before (duplicates among them or with the cache are dropped)."""
        keys = np.concatenate([self.keys, pack_masks(masks)])
        values = np.concatenate([self.values, np.asarray(values, np.float64)])
        keys, first = np.unique(keys, return_index=True)  # sorted; keeps the earliest entry
        self.keys, self.values = keys, values[first]

    def state_dict(self) -> dict[str, np.ndarray]:
        raw = self.keys.view(np.uint8).reshape(len(self.keys), -1)
        return {"cache_keys": raw, "cache_values": self.values}

    @classmethod
    def from_state_dict(cls, num_features: int, state: dict[str, np.ndarray]) -> MaskCache:
        raw = np.ascontiguousarray(state["cache_keys"], np.uint8)
        keys = raw.view(np.dtype((np.void, raw.shape[1]))).ravel() if raw.size else None
        return cls(num_features, keys=keys, values=np.asarray(state["cache_values"], np.float64))


@jax.jit
def _take_rows(stacks: tuple[Any, ...], rows: jax.Array) -> Any:
    """Rows ``rows`` of the stacks laid end to end, as one stack (one program per shape)."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[rows], *stacks)


class TrainedHeads:
    """Trained heads by mask: a pytree row per mask, kept on the device that trained it.

    ``add`` takes the outcome of one training call (any pytree whose leaves have
    a leading head axis, e.g. ``trainer.TrainedPopulation``); ``retain`` keeps
    the heads of the given masks, gathered into one stack, and lets the rest go,
    so memory stays at the retained heads plus what was added since (a search:
    its population plus one generation). Masks are looked up like
    ``MaskCache``'s (sorted packed keys). Gathers are one jitted program whose
    shapes repeat from one generation to the next (as many rows as masks asked
    for), so a search compiles it a few times, not once per generation.
    Nothing here is checkpointed: after a resume, heads trained before the
    interruption are missing (``missing``).
    """

    def __init__(self):
        self._clear()

    def _clear(self) -> None:
        self._stacks: list[Any] = []  # pytrees with a leading head axis
        self._keys = np.zeros((0,), np.dtype((np.void, 1)))  # sorted packed masks (any width when empty)
        self._rows = np.zeros((0,), np.int32)  # each key's row in the stacks laid end to end

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, masks: np.ndarray, trained: Any, first_row: int = 0) -> None:
        """Rows ``first_row`` .. ``first_row`` + K - 1 of ``trained`` are the heads of ``masks`` (K, D);
        a held mask keeps its head. ``trained`` is kept whole (runs in lockstep share one call's
        stack), so that the gathers of ``retain`` see the same shapes every generation."""
        start = sum(len(jax.tree.leaves(stack)[0]) for stack in self._stacks) + first_row
        self._stacks.append(trained)
        keys = pack_masks(masks)
        keys = np.concatenate([self._keys, keys]) if len(self._keys) else keys
        rows = np.concatenate([self._rows, start + np.arange(len(masks), dtype=np.int32)])
        self._keys, first = np.unique(keys, return_index=True)  # sorted; keeps the earliest entry
        self._rows = rows[first]

    def missing(self, masks: np.ndarray) -> np.ndarray:
        """(K,) bool: which masks have no head here."""
        return ~find(self._keys, pack_masks(masks))[0]

    def stack(self, masks: np.ndarray) -> Any:
        """The heads of ``masks`` (K, D), all held, stacked in that order (a leading K axis)."""
        found, position = find(self._keys, pack_masks(masks))
        if not found.all():
            raise KeyError(f"TrainedHeads.stack: {int((~found).sum())} of {len(found)} masks have no head")
        return _take_rows(tuple(self._stacks), self._rows[position])

    def retain(self, masks: np.ndarray) -> None:
        """Keeps the heads of ``masks`` (those held; duplicates once), in one stack; drops the rest.

        The new stack has a row per mask asked for (held masks first, the rest
        repeating the first), so that its shape does not change as the number of
        distinct held masks does.
        """
        masks = np.asarray(masks, bool)
        _, first = np.unique(pack_masks(masks), return_index=True)
        held = masks[np.sort(first)]
        held = held[~self.missing(held)]
        if not len(held):
            self._clear()
            return
        stacked = self.stack(np.concatenate([held, np.repeat(held[:1], len(masks) - len(held), axis=0)]))
        self._clear()
        self.add(held, stacked)
