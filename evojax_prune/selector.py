"""``FeatureSelector``: the search as a scikit-learn feature selector, for scripts that want the mask.

::

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    import evojax_prune as ep

    pipeline = make_pipeline(ep.FeatureSelector(), LogisticRegression(max_iter=1000))
    pipeline.fit(x_train, y_train, featureselector__ood=x_ood)   # OoD features are required
    pipeline.score(x_test, y_test)

``fit`` runs ``run_search`` (MO-EvoPruneDeepTL: NSGA-II over masks, each
mask's head trained and scored on error, MEM and 1 - AUROC) and keeps one
member of the final front: ``support_`` is its (D,) mask, ``result_`` the
whole ``SearchResult`` (every member, its heads, the history).

The robustness objective needs out-of-distribution data: it is the AUROC of
ODIN scores separating the validation samples from OoD samples. ``fit(X, y)``
therefore refuses to run without ``ood=`` rather than invent OoD data or
silently drop the objective; ``fit(featureset)`` takes a ``FeatureSet``, which
carries its own. Where the OoD features can only be made at fit time (their
width is the width of whatever reaches the selector), ``ood`` may be a
callable ``ood(X) -> (M, D)``: the caller's choice of OoD data, still never
the selector's.

scikit-learn's ``check_estimator`` passes on it whole (legacy checks included;
tests/test_selector.py runs it on a tiny search with a callable ``ood``), so
no check is expected to fail. With the default ``ood=None`` every check that
fits on arrays fails by design: the refusal above.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from evojax_prune.config import RunConfig, preset
from evojax_prune.data.featureset import FeatureSet
from evojax_prune.search.controls import RunControls
from evojax_prune.search.loop import run_search


class FeatureSelector(SelectorMixin, BaseEstimator):
    """Selects features by multi-objective evolutionary pruning (sklearn's selector interface).

    Parameters:
      config: a ``RunConfig``, a preset name (``"quick"``, ``"default"``,
        ``"paper"``) or None for ``preset("quick")`` (seconds to minutes on a
        CPU; ``"default"`` is the method as sized for an accelerator).
      seed: the search's seed (and the validation split's); the same seed
        gives the same mask.
      member: which front member's mask ``support_`` is: ``"accuracy"`` (the
        highest validation accuracy, ties to fewer features), ``"mem"`` (the
        fewest features, ties to higher accuracy), ``"auroc"`` (the highest
        validation AUROC of the configured kind, ties to higher accuracy), or
        an int, a position in ``result_.masks`` (sorted by validation
        accuracy, best first).
      max_features: most features a mask may keep (``SearchConfig.max_features``);
        None keeps the config's.
      time_budget, hv_patience: stop the search early (``RunControls``).
      validation_fraction: share of ``(X, y)`` held out, stratified, to score
        the masks when ``fit`` gets no ``X_val``.
      ood: (M, D) out-of-distribution features for ``fit`` on arrays (``fit``'s
        own ``ood=`` takes precedence), so that a Pipeline's ``fit(X, y)`` needs
        no fit parameter; or a callable ``ood(X) -> (M, D)``, called with
        ``fit``'s validated (N, D) float32 ``X``.

    Attributes (after ``fit``):
      result_: the ``SearchResult``.
      support_: (D,) bool, the chosen member's mask.
      member_: its position in ``result_.masks``. Both follow ``member``:
        ``set_params(member=...)`` after a fit picks from the fitted front,
        with no new search.
      classes_: the labels of ``y`` (``fit`` on arrays), in label order.
      n_features_in_: D (and ``feature_names_in_`` for a DataFrame).
    """

    def __init__(self, config: RunConfig | str | None = None, seed: int = 0, member: str | int = "accuracy",
                 max_features: int | None = None, time_budget: float | None = None,
                 hv_patience: int | None = None, validation_fraction: float = 0.2, ood=None):
        self.config = config
        self.seed = seed
        self.member = member
        self.max_features = max_features
        self.time_budget = time_budget
        self.hv_patience = hv_patience
        self.validation_fraction = validation_fraction
        self.ood = ood

    def fit(self, X, y=None, *, ood=None, X_val=None, y_val=None, initial_masks=None) -> FeatureSelector:
        """Runs the search and keeps one front member's mask.

        Args:
          X: (N, D) features, or a ``FeatureSet`` (then ``y``, ``ood``, ``X_val`` and
            ``y_val`` must be None: it holds its splits and OoD data).
          y: (N,) labels, any values sklearn accepts as classes.
          ood: (M, D) features of out-of-distribution samples, or a callable
            ``ood(X)`` returning them; required with arrays (see the module
            docstring). They score the front twice, as its validation and its
            "test" OoD data.
          X_val, y_val: a validation split to score masks on; None holds out
            ``validation_fraction`` of (X, y). The front's "test" metrics in
            ``result_`` are this split again: nothing is held out from the
            caller, who scores the selected features downstream.
          initial_masks: a warm start for the first population (``run_search``).

        Returns:
          self.
        """
        features = self.search_features(X, y, ood, X_val, y_val)
        config = self._config()
        controls = RunControls(time_budget=self.time_budget, hv_patience=self.hv_patience)
        result = run_search(features, config, seed=self.seed, controls=controls, initial_masks=initial_masks)
        self.result_ = result
        self.member_  # noqa: B018 -- a bad member is refused now, not at the first transform
        return self

    @property
    def member_(self) -> int:
        """The position in ``result_.masks`` of the member ``member`` names."""
        check_is_fitted(self, "result_")
        try:
            return self.result_.member_index(self.member)
        except ValueError as error:
            raise ValueError(f"FeatureSelector.{error}") from None

    @property
    def support_(self) -> np.ndarray:
        """(D,) bool, the mask of the member ``member`` names."""
        return np.array(self.result_.masks[self.member_], bool)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # y, the class labels, unless X is a FeatureSet
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]  # transform picks columns
        return tags

    def transform(self, X):
        """(N, k) ``X[:, support_]``: a copy of the k selected columns (N k values), not a view."""
        return super().transform(X)

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_

    def _config(self) -> RunConfig:
        config = self.config
        if config is None:
            config = preset("quick")
        elif isinstance(config, str):
            config = preset(config)
        elif not isinstance(config, RunConfig):
            raise TypeError(f"FeatureSelector.config must be a RunConfig, a preset name or None, "
                            f"got {type(config).__name__}")
        if self.max_features is not None:
            config = config.replace(search={"max_features": self.max_features}, preset=config.preset)
        return config

    def search_features(self, X, y=None, ood=None, X_val=None, y_val=None) -> FeatureSet:
        """The FeatureSet ``fit`` searches on (arguments as ``fit``'s), its splits drawn as fit draws them.

        Sets ``n_features_in_`` and ``classes_``, as ``fit`` does.
        """
        if isinstance(X, FeatureSet):
            given = [name for name, value in (("y", y), ("ood", ood), ("X_val", X_val), ("y_val", y_val),
                                              ("FeatureSelector(ood=)", self.ood)) if value is not None]
            if given:
                raise ValueError(f"FeatureSelector.fit: a FeatureSet holds its own splits and OoD data; "
                                 f"do not pass {', '.join(given)}")
            self.n_features_in_ = X.num_features
            self.classes_ = np.arange(X.num_classes)
            if hasattr(self, "feature_names_in_"):  # an earlier fit on a DataFrame's: not these columns
                del self.feature_names_in_
            return X
        if y is None:
            # X first: a bad X is named before a missing y (validate_data would name y first).
            check_array(X, dtype=np.float32)
            raise ValueError("FeatureSelector requires y to be passed, but the target y is None: "
                             "pass class labels y, or a FeatureSet as X")
        X, y = validate_data(self, X, y, dtype=np.float32)  # sets n_features_in_
        ood = self.ood if ood is None else ood
        if callable(ood):
            ood = ood(X)
        if ood is None:
            raise ValueError(
                "FeatureSelector.fit needs ood= (or FeatureSelector(ood=...)), (M, D) features of "
                "out-of-distribution samples: the robustness objective (1 - AUROC of ODIN scores) ranks "
                "heads by how well they tell X's samples from them, and cannot be computed without them"
            )
        ood = check_array(ood, dtype=np.float32)
        if ood.shape[1] != X.shape[1]:
            raise ValueError(f"FeatureSelector.fit: ood has {ood.shape[1]} features, X has {X.shape[1]}")
        self.classes_, labels = np.unique(y, return_inverse=True)
        if X_val is None:
            counts = np.bincount(labels)
            if counts.min() < 2:
                lonely = self.classes_[counts < 2][:5].tolist()
                raise ValueError(f"FeatureSelector.fit: classes {lonely} of y have one sample, too few to "
                                 "hold out a stratified validation share; y must be class labels, each "
                                 "with two samples at least, or pass X_val and y_val")
            x_train, x_val, y_train, y_val_ = train_test_split(
                X, labels, test_size=self.validation_fraction, stratify=labels, random_state=self.seed)
        else:
            if y_val is None:
                raise ValueError("FeatureSelector.fit: X_val needs y_val")
            x_val = check_array(X_val, dtype=np.float32)
            if x_val.shape[1] != X.shape[1]:
                raise ValueError(f"FeatureSelector.fit: X_val has {x_val.shape[1]} features, X has "
                                 f"{X.shape[1]}")
            unknown = np.setdiff1d(np.asarray(y_val), self.classes_)
            if unknown.size:
                raise ValueError(f"FeatureSelector.fit: y_val has labels not in y: {unknown[:5].tolist()}")
            x_train, y_train, y_val_ = X, labels, np.searchsorted(self.classes_, np.asarray(y_val))
        y_train, y_val_ = y_train.astype(np.int32), y_val_.astype(np.int32)
        return FeatureSet(
            x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val_, x_test=x_val, y_test=y_val_,
            ood_val=ood, ood_test=ood, class_names=tuple(str(label) for label in self.classes_),
            metadata={"name": "FeatureSelector", "source": "arrays given to FeatureSelector.fit"},
        )
