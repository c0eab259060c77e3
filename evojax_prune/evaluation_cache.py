"""Objectives are a deterministic function of the mask: never train the same mask twice.

``MaskCache`` maps packed masks to the metrics their head earned. Lookups and
inserts are vectorised (sorted byte strings and ``np.searchsorted``), so a
generation's bookkeeping is a few array operations whatever its size.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = (
    "accuracy", "mem", "auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out", "epochs", "train_loss",
)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(K, D) bool -> (K,) fixed-width byte strings, one key per mask."""
    packed = np.packbits(np.asarray(masks, bool), axis=1)
    return np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()


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

    def lookup(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (found (K,) bool, values (K, metrics)) with NaN rows where not found."""
        keys = pack_masks(masks)
        position = np.searchsorted(self.keys, keys)
        clipped = np.minimum(position, max(len(self.keys) - 1, 0))
        found = (position < len(self.keys)) & (self.keys[clipped] == keys) if len(self.keys) else (
            np.zeros(len(keys), bool)
        )
        values = np.full((len(keys), len(METRIC_NAMES)), np.nan)
        values[found] = self.values[clipped[found]]
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
