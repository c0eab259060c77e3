"""The FeatureSet a run directory was made from, found again for the commands that read a run.

A run directory records its data set (``config.json``: ``features``, D and C) but
not its arrays. The embedded digits are rebuilt from the recorded split settings;
any other FeatureSet is given by the caller and checked against the record.
"""

from __future__ import annotations

from typing import Any

from evojax_prune.data import embedded
from evojax_prune.data.featureset import FeatureSet


def read_run_features(recorded: dict[str, Any], features: Any = None, *, source: str = "the run"):
    """The FeatureSet a run was started with.

    Args:
      recorded: config.json's dict (``read_run``).
      features: a FeatureSet, a path to one, or ``None``: the embedded digits
        are rebuilt from the recorded split settings; any other data set must
        be given.
      source: names the run in error messages.

    Returns:
      FeatureSet, checked against the run's name, D and C.
    """
    metadata = recorded.get("features") or {}
    name = metadata.get("name", "unnamed")
    if features is None:
        if name != "digits":
            raise ValueError(
                f"{source}: the run used the features {name!r}, which cannot be rebuilt; "
                "pass features=FILE, the FeatureSet .npz the run was started with"
            )
        splits = metadata.get("splits", {})
        features = embedded.digits(
            seed=int(splits.get("seed", 0)),
            val_fraction=float(splits.get("val_fraction", 0.2)),
            test_fraction=float(splits.get("test_fraction", 0.2)),
        )
    elif not isinstance(features, FeatureSet):
        features = FeatureSet.load(features)
    if features.name != name:
        raise ValueError(
            f"{source}: the run used the features {name!r}, the FeatureSet given is {features.name!r}"
        )
    for what, expected, found in (("D", recorded.get("num_features"), features.num_features),
                                  ("C", recorded.get("num_classes"), features.num_classes)):
        if expected is not None and expected != found:
            raise ValueError(
                f"{source}: the run used {name!r} with {what} = {expected}, the FeatureSet given has {found}"
            )
    return features
