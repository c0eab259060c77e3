"""What a run's files belong to: the fingerprint each of them carries.

A run's result is fixed by its configuration (less the engine: how heads train
is not what they learn, a run may resume on other devices), its seed, the data
it searched (``FeatureSet.digest``), its strategy, its warm start and the file
format. Their fingerprint is written into every file of a run directory:

  config.json, summary.json   ``"fingerprint"``: the object below
  checkpoint*.npz, pareto.npz ``fingerprint``: the same object as a JSON string
  history.jsonl               each line's ``"run_id"``: the fingerprint's ``id``

so that a file copied from another run is refused by name, with both values
(``mismatch``), before anything is written. pareto.csv, a table for people
and pandas, carries none: it is rewritten from the others. Files written
before fingerprints carry none and are read as before (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from evojax_prune.config import RunConfig

KEY = "fingerprint"  # in config.json, summary.json and the .npz files
LINE_KEY = "run_id"  # in each history.jsonl line
# What a fingerprint is of, in the order a mismatch names them.
PARTS = ("seed", "config", "features", "strategy", "initial_masks", "format")
PART_NAMES = {"seed": "seed", "config": "configuration", "features": "FeatureSet", "strategy": "strategy",
              "initial_masks": "initial masks", "format": "format"}


def _digest(data: Any) -> str:
    """16 hex digits of the SHA-256 of ``data`` as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, allow_nan=True).encode()).hexdigest()[:16]


def config_digest(config: RunConfig | dict[str, Any]) -> str:
    """The digest of what in a configuration fixes the result: every section but ``engine``."""
    recorded = RunConfig.from_dict(config) if isinstance(config, dict) else config
    return _digest({name: value for name, value in recorded.to_dict().items() if name != "engine"})


def make(*, config: RunConfig | dict[str, Any], seed: int, features: str, strategy: str,
         initial_masks: str | None, file_format: int) -> dict[str, Any]:
    """A run's fingerprint.

    Args:
      config: the run's configuration (or its ``to_dict``).
      seed: the run's seed.
      features: ``FeatureSet.digest`` of the data searched (of the folds, ``folds_digest``).
      strategy: ``"nsga2"``, or the evosax algorithm's class name.
      initial_masks: the warm start's SHA-256 (``warm_start.digest``), or None.
      file_format: the run directory's format (``rundir.FORMAT``).

    Returns:
      ``PARTS`` (digests shortened to 16 hex digits) and ``id``, the digest of them all.
    """
    parts = {"seed": int(seed), "config": config_digest(config), "features": features[:16],
             "strategy": strategy, "initial_masks": None if initial_masks is None else initial_masks[:16],
             "format": int(file_format)}
    return {**parts, "id": _digest(parts)}


def folds_digest(digests: list[str]) -> str:
    """One digest of the folds of a fold-averaged search, in their order."""
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def mismatch(found: dict[str, Any] | None, expected: dict[str, Any] | None, *,
             expected_from: str = "this run's") -> str | None:
    """Why ``found`` is another run's fingerprint than ``expected``, or None.

    None also when either is missing (a file written before fingerprints). The
    reason names each part that differs with both values, e.g. "seed 1, the
    run's 0".
    """
    if not isinstance(found, dict) or not isinstance(expected, dict):
        return None
    if found.get("id") == expected.get("id"):
        return None
    differing = [f"{PART_NAMES[part]} {found[part]!r}, {expected_from} {expected[part]!r}"
                 for part in PARTS if part in found and part in expected and found[part] != expected[part]]
    ids = f"id {found.get('id')!r}, {expected_from} {expected.get('id')!r}"
    return f"belongs to another run ({'; '.join(differing) or ids})"


def as_array(fingerprint: dict[str, Any]) -> np.ndarray:
    """The fingerprint as an .npz entry: a 0-d unicode array of its JSON."""
    return np.asarray(json.dumps(fingerprint, sort_keys=True))


def from_array(array: np.ndarray | None) -> dict[str, Any] | None:
    """The fingerprint an .npz entry holds; None when there is none (a file from before them).

    Raises:
      ValueError: the entry is there but is not a fingerprint.
    """
    if array is None:
        return None
    try:
        value = json.loads(str(array)) if array.dtype.kind == "U" and array.shape == () else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or "id" not in value:
        raise ValueError(f"its {KEY} entry is not a run's fingerprint ({array.dtype} {array.shape})")
    return value
