"""Which split a search measures its objectives on (``SearchConfig.selection``).

The authors had no validation split: they trained every head on the whole
train split and measured accuracy and AUROC on the test split and its OoD set,
so their fronts are tuned on the data they report (docs/PROTOCOL.md,
"Objectives and splits"). This project selects on a validation split by
default; ``selection="test"`` reproduces the authors' protocol by handing
the search a view of the FeatureSet in which the test split plays the
validation split's part.
"""

from __future__ import annotations

import numpy as np

from evojax_prune.config import SearchConfig
from evojax_prune.data.featureset import FeatureSet


def validation_is_its_own_split(features: FeatureSet) -> bool:
    """The FeatureSet's validation split came from the data set's own ``validation`` split
    (``splits.make_splits``' metadata), not held out of train."""
    splits = features.metadata.get("splits")
    val = splits.get("val") if isinstance(splits, dict) else None
    return isinstance(val, dict) and val.get("from") == "validation"


def search_view(features: FeatureSet, search: SearchConfig) -> FeatureSet:
    """The FeatureSet as the search sees it.

    ``selection="validation"``: ``features`` itself. ``"test"``: train is
    train and validation together (the validation split returns to the train
    split it was held out of; one the data set shipped apart stays out), the
    validation split and OoD validation set are the test split and OoD test
    set, and the metadata's ``selection`` says so. A view is its own view.
    """
    if search.selection == "validation" or "selection" in features.metadata:
        return features
    own = validation_is_its_own_split(features)
    x_train = features.x_train if own else np.concatenate([features.x_train, features.x_val])
    y_train = features.y_train if own else np.concatenate([features.y_train, features.y_val])
    selection = {
        "objectives_on": "test split and OoD test set",
        "trained_on": "train split" if own else "train split with the validation split returned to it",
        "train_size": len(y_train),
    }
    return FeatureSet(
        x_train=x_train, y_train=y_train,
        x_val=features.x_test, y_val=features.y_test,
        x_test=features.x_test, y_test=features.y_test,
        ood_val=features.ood_test, ood_test=features.ood_test,
        class_names=features.class_names,
        metadata={**features.metadata, "selection": selection},
    )
