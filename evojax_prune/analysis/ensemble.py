"""Ensembles of a finished run's Pareto-front members against the members they contain.

MO-EvoPruneDeepTL (Poyatos et al., arXiv 2302.10253) ends with a front of
pruned heads; its authors combine front members of similar quality into
ensembles and report that they beat the best member they contain (docs/PROTOCOL.md,
"Published figures": CATARACT about 0.777 vs 0.752, RPS 0.997 vs 0.981,
PAINTING 0.951 vs 0.949).

The bands and votes are ``voting.py``'s (the authors' percentile bands,
majority and soft votes, their swept OoD vote and the vote at a validation
TPR). This module runs them on a run: every member's logits and OoD scores
(``member_outputs``, one head at a time), every band's ensembles at once
(``band_metrics``, a vmap over bands), and the comparison with single members
(``compare_ensembles``).

The authors had no validation split, so their bands were cut on test metrics
and the comparison was with the best test accuracy inside the band. What this
module does differently, and why:

  * Bands are cut on *validation* metrics, so the test numbers are not used
    to pick the ensemble; the comparison is still with the band's best
    member on test (the authors' comparison, an oracle choice that favours
    the single member), and with the member validation would pick.
  * Beside the authors' sweep, the OoD vote a deployed ensemble would use:
    every member thresholds its score at 95% TPR on the InD *validation*
    data (``voting.tpr_threshold``), the ensemble calls InD by majority
    (``voting.threshold_vote``); and the soft counterpart, the mean OoD score
    over members (``voting.mean_score``).
  * The members' OoD score is the run's (``config.ood.score``: ODIN, the
    authors', by default).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evojax_prune import head
from evojax_prune.analysis import voting
from evojax_prune.config import PruneTarget
from evojax_prune.score import metrics

# By name: ``ood_scores`` is what this module calls the OoD samples' scores.
from evojax_prune.score.ood_scores import DEFAULT_SPEC, OodSpec, head_scores
from evojax_prune.search import selection

# --------------------------------------------------------------------------- members' outputs


@struct.dataclass
class MemberOutputs:
    """What K front members say about the evaluation data.

    Attributes:
      logits: (K, N, C) float32 on the InD evaluation features (test split).
      ind_scores: (K, N) float32 OoD scores (ODIN by default) of the InD evaluation features.
      ood_scores: (K, M) float32 OoD scores of the OoD evaluation features.
      reference_scores: (K, V) float32 OoD scores of the InD reference
        features (validation split), where vote thresholds are set.
    """

    logits: jax.Array
    ind_scores: jax.Array
    ood_scores: jax.Array
    reference_scores: jax.Array


@functools.partial(jax.jit, static_argnames=("prune",))
def member_outputs(
    params: head.HeadParams,
    masks: jax.Array,
    features: jax.Array,
    ood_features: jax.Array,
    reference_features: jax.Array,
    ood: OodSpec = DEFAULT_SPEC,
    prune: PruneTarget = "features",
    train: tuple[jax.Array, jax.Array] | tuple[()] = (),
) -> MemberOutputs:
    """Logits and OoD scores (ODIN by default) of K heads, one head at a time.

    Heads run sequentially (``lax.map``) so that memory holds one head's
    masked inputs, (N + M + V, D), whatever K is: ensembles are built once
    per run and the front can hold hundreds of members.

    Args:
      params: HeadParams stacked on a leading K axis.
      masks: (K, L) bool chromosomes (``HeadConfig.prune``).
      features: (N, D) float InD evaluation features (the test split).
      ood_features: (M, D) float OoD evaluation features.
      reference_features: (V, D) float InD features for thresholds (validation).
      ood: the OoD score, its temperature and ODIN's perturbation (``OodSpec``;
        the paper's ODIN at T = 1000 by default).
      prune: what the masks prune (``HeadConfig.prune``), static.
      train: (x_train, y_train) for a score fitted on the training split (``ood.fitted``), else ``()``.

    Returns:
      MemberOutputs.
    """
    num_ind, num_ood = features.shape[0], ood_features.shape[0]
    rows = jnp.concatenate([features, ood_features, reference_features], axis=0)

    def one_head(member):
        member_params, mask = member
        # The accuracy always uses the unperturbed logits; only the scores see the ODIN step.
        logits, scores = head_scores(
            member_params, mask, rows, ood=ood, train=train, prune=prune,
        )
        ood_end = num_ind + num_ood
        return logits[:num_ind], scores[:num_ind], scores[num_ind:ood_end], scores[ood_end:]

    logits, ind_scores, ood_scores, reference_scores = jax.lax.map(
        one_head, (params, jnp.asarray(masks, bool))
    )
    return MemberOutputs(logits, ind_scores, ood_scores, reference_scores)


@jax.jit
def member_metrics(outputs: MemberOutputs, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each member's own test metrics: accuracy, exact AUROC and the authors' AUROC, each (K,) float32."""
    return (
        jax.vmap(metrics.accuracy, in_axes=(0, None))(outputs.logits, labels),
        jax.vmap(metrics.auroc)(outputs.ind_scores, outputs.ood_scores),
        jax.vmap(metrics.auroc_paper)(outputs.ind_scores, outputs.ood_scores),
    )


# --------------------------------------------------------------------------- all bands at once


@struct.dataclass
class BandMetrics:
    """Every ensemble of B bands, each field (B,) float32.

    Classification ensembles (members from ``class_members``):
      majority_vote_accuracy, soft_vote_accuracy.
    OoD ensembles (members from ``ood_members``):
      mean_score_auroc: exact AUROC of ``voting.mean_score``.
      vote_tpr, vote_fpr, vote_accuracy, vote_auroc: ``voting.threshold_vote`` at the
        members' validation thresholds.
      paper_vote_auroc: ``voting.paper_vote_auroc``.
    """

    majority_vote_accuracy: jax.Array
    soft_vote_accuracy: jax.Array
    mean_score_auroc: jax.Array
    vote_tpr: jax.Array
    vote_fpr: jax.Array
    vote_accuracy: jax.Array
    vote_auroc: jax.Array
    paper_vote_auroc: jax.Array


@jax.jit
def band_metrics(
    outputs: MemberOutputs,
    labels: jax.Array,
    thresholds: jax.Array,
    class_members: jax.Array,
    ood_members: jax.Array,
) -> BandMetrics:
    """All ensembles of all bands in one call (vmap over bands).

    Args:
      outputs: MemberOutputs of K members (N InD, M OoD evaluation samples).
      labels: (N,) int classes of the InD evaluation samples.
      thresholds: (K,) float, each member's InD threshold (``voting.tpr_threshold``).
      class_members: (B, K) bool, members of each classification ensemble.
      ood_members: (B, K) bool, members of each OoD ensemble.

    Returns:
      BandMetrics of (B,) float32. An empty band's numbers are meaningless
      (its votes are class 0 / OoD); ``compare_ensembles`` reports them as NaN.
    """
    num_classes = outputs.logits.shape[-1]
    predictions = jnp.argmax(outputs.logits, axis=-1)
    probabilities = jax.nn.softmax(outputs.logits, axis=-1)

    def one_band(class_selection, ood_selection):
        majority = voting.majority_vote(predictions, num_classes, class_selection)
        vote = voting.threshold_vote(outputs.ind_scores, outputs.ood_scores, thresholds, ood_selection)
        mean = (voting.mean_score(outputs.ind_scores, ood_selection),
                voting.mean_score(outputs.ood_scores, ood_selection))
        return BandMetrics(
            majority_vote_accuracy=metrics.fraction(jnp.sum(majority == labels), labels.shape[0]),
            soft_vote_accuracy=metrics.accuracy(voting.soft_vote(probabilities, class_selection), labels),
            mean_score_auroc=metrics.auroc(*mean),
            vote_tpr=vote.tpr,
            vote_fpr=vote.fpr,
            vote_accuracy=vote.accuracy,
            vote_auroc=vote.auroc,
            paper_vote_auroc=voting.paper_vote_auroc(outputs.ind_scores, outputs.ood_scores, ood_selection),
        )

    return jax.vmap(one_band)(jnp.asarray(class_members, bool), jnp.asarray(ood_members, bool))


# --------------------------------------------------------------------------- a finished run


@dataclasses.dataclass(frozen=True)
class BandEnsemble:
    """The ensembles of one percentile band and the members they compete with, on the test data.

    Attributes:
      band: (lo, hi) percentiles.
      class_members: front members (indices) in the band of validation accuracy.
      majority_vote_accuracy, soft_vote_accuracy: the classification ensembles.
      best_member_accuracy: highest test accuracy among ``class_members``
        (the authors' comparison: an oracle pick).
      chosen_member_accuracy: test accuracy of the member with the highest
        validation accuracy in the band (what one would deploy without the ensemble).
      ood_members: front members in the band of the OoD ranking metric.
      mean_score_auroc: AUROC of the mean OoD score.
      vote_accuracy, vote_tpr, vote_fpr, vote_auroc: the majority vote of
        members' InD/OoD calls at 95% (``tpr``) validation TPR.
      paper_vote_auroc: the authors' swept vote (``voting.paper_vote_auroc``).
      best_member_auroc, best_member_auroc_paper: highest exact / authors'
        AUROC among ``ood_members`` on test.
      chosen_member_auroc: test AUROC of the member with the best validation
        ranking metric in the band.
    Every number is NaN for an empty band.
    """

    band: tuple[float, float]
    class_members: tuple[int, ...]
    majority_vote_accuracy: float
    soft_vote_accuracy: float
    best_member_accuracy: float
    chosen_member_accuracy: float
    ood_members: tuple[int, ...]
    mean_score_auroc: float
    vote_accuracy: float
    vote_tpr: float
    vote_fpr: float
    vote_auroc: float
    paper_vote_auroc: float
    best_member_auroc: float
    best_member_auroc_paper: float
    chosen_member_auroc: float

    @property
    def label(self) -> str:
        low, high = self.band
        return f"{low:g}-{high:g}"

    @property
    def accuracy_gain(self) -> float:
        """Majority vote minus the best member's test accuracy (> 0: the ensemble wins)."""
        return self.majority_vote_accuracy - self.best_member_accuracy

    @property
    def auroc_gain(self) -> float:
        """Mean-score ensemble minus the best member's test AUROC."""
        return self.mean_score_auroc - self.best_member_auroc


@dataclasses.dataclass(frozen=True)
class EnsembleComparison:
    """Ensembles of a finished run's front against their best members, on the test data.

    Attributes:
      bands: one BandEnsemble per band, in the order asked for.
      tpr: InD validation TPR at which members' vote thresholds are set.
      ood_ranking: "auroc" or "accuracy", what the OoD bands are cut on.
      member_accuracy, member_auroc, member_auroc_paper: (K,) float64 test
        metrics of each front member, recomputed here (they agree with the run's).
      best_accuracy, best_auroc: the whole front's best single member on test.
      baseline_accuracy, baseline_auroc: the unpruned head on test.
    """

    bands: tuple[BandEnsemble, ...]
    tpr: float
    ood_ranking: str
    member_accuracy: np.ndarray
    member_auroc: np.ndarray
    member_auroc_paper: np.ndarray
    best_accuracy: float
    best_auroc: float
    baseline_accuracy: float
    baseline_auroc: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists, floats (NaN for empty bands), member indices."""
        return {
            "tpr": self.tpr,
            "ood_ranking": self.ood_ranking,
            "fpr_convention": "in-distribution as positive (ODIN paper)",
            "selection": "bands cut on validation metrics; all numbers on the test split / OoD test data",
            "best_member": {"accuracy": self.best_accuracy, "auroc": self.best_auroc},
            "baseline": {"accuracy": self.baseline_accuracy, "auroc": self.baseline_auroc},
            "members": {"accuracy": self.member_accuracy.tolist(), "auroc": self.member_auroc.tolist(),
                        "auroc_paper": self.member_auroc_paper.tolist()},
            "bands": [
                {**{field.name: _jsonable(getattr(band, field.name)) for field in dataclasses.fields(band)},
                 "accuracy_gain": _jsonable(band.accuracy_gain), "auroc_gain": _jsonable(band.auroc_gain)}
                for band in self.bands
            ],
        }

    def table(self) -> str:
        """A Markdown table: one row per band, ensembles beside the band's best member."""
        lines = [
            "| band | n acc | majority | soft | best member | n OoD | mean-score AUROC | vote AUROC "
            "| vote TPR / FPR | authors' vote AUROC | best member AUROC (exact / authors') |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for band in self.bands:
            lines.append(
                f"| {band.label} | {len(band.class_members)} | {_fmt(band.majority_vote_accuracy)} "
                f"| {_fmt(band.soft_vote_accuracy)} | {_fmt(band.best_member_accuracy)} "
                f"| {len(band.ood_members)} | {_fmt(band.mean_score_auroc)} | {_fmt(band.vote_auroc)} "
                f"| {_fmt(band.vote_tpr)} / {_fmt(band.vote_fpr)} | {_fmt(band.paper_vote_auroc)} "
                f"| {_fmt(band.best_member_auroc)} / {_fmt(band.best_member_auroc_paper)} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.4f}"


def _jsonable(value):
    """Tuples as lists and NaN (an empty band) as null, so the file is strict JSON."""
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# The recorded test metrics and the ones recomputed here come from different
# XLA programs (vmapped chunks vs one head at a time), so last-bit differences
# may flip a near-tied prediction or score pair; a different FeatureSet moves
# them by far more.
_REPRODUCTION_TOLERANCE_SAMPLES = 2
_REPRODUCTION_TOLERANCE_AUROC = 0.01


def compare_ensembles(
    run: Any,
    features: Any = None,
    *,
    bands: Sequence[tuple[float, float]] = voting.AUTHORS_BANDS,
    tpr: float = voting.DEFAULT_TPR,
    ood_ranking: str = "auroc",
) -> EnsembleComparison:
    """Every band's ensembles against its best single member, on the test data.

    Args:
      run: a finished run: its directory (str or Path) or a ``SearchResult``.
      features: the run's FeatureSet (or a path to its ``.npz``). For a run
        directory it may be omitted when the run used the embedded digits
        (they are rebuilt from the recorded split seed); it is checked against
        the run (name, D, C, and that it reproduces the members' recorded
        test accuracy and AUROC).
      bands: percentile bands (default: the authors' eight).
      tpr: InD validation TPR for the members' vote thresholds.
      ood_ranking: "auroc" (the authors': OoD ensembles banded on validation
        AUROC, the run's AUROC kind) or "accuracy" (the same members as the
        classification ensembles).

    Returns:
      EnsembleComparison.

    Raises:
      ValueError: features that do not match the run, bad bands or options.
      FileNotFoundError: a run directory that is missing or incomplete.
    """
    from evojax_prune.data import run_features
    from evojax_prune.data.featureset import FeatureSet
    from evojax_prune.result import robustness_metric
    from evojax_prune.run import search_result
    from evojax_prune.run.search_result import SearchResult

    if ood_ranking not in ("auroc", "accuracy"):
        raise ValueError(f"ood_ranking must be 'auroc' or 'accuracy', got {ood_ranking!r}")
    bands = voting.checked_bands(bands)
    if isinstance(run, str | os.PathLike):
        result, recorded = search_result.read_run(run)
        features = run_features.read_run_features(recorded, features, source=str(run))
    elif isinstance(run, SearchResult):
        result = run
        if features is None:
            raise ValueError("compare_ensembles: a SearchResult needs its FeatureSet (features=...)")
        if not isinstance(features, FeatureSet):
            features = FeatureSet.load(features)
    else:
        raise TypeError(
            f"compare_ensembles: run must be a run directory or a SearchResult, got {type(run).__name__}"
        )
    _check_features_fit(result, features)

    config = result.config
    # As the search saw them: a run selected on test ranks and thresholds on the test split,
    # and fitted Mahalanobis on train and validation together.
    features = selection.search_view(features, config.search)
    ood = OodSpec.from_config(config.ood)
    outputs = member_outputs(
        jax.tree.map(jnp.asarray, result.params), jnp.asarray(result.masks),
        jnp.asarray(features.x_test), jnp.asarray(features.ood_test), jnp.asarray(features.x_val),
        ood=ood, prune=config.head.prune,
        train=ood.training_rows((features.x_train, features.y_train), "compare_ensembles"),
    )
    labels = jnp.asarray(features.y_test)
    member_accuracy, member_auroc, member_auroc_paper = (
        np.asarray(value, np.float64) for value in jax.device_get(member_metrics(outputs, labels))
    )
    if result.folds == 1:  # a fold-averaged run recorded fold means; its heads are the first fold's
        _check_reproduction(result, member_accuracy, member_auroc, len(features.y_test))

    robustness_name = robustness_metric(config.ood.auroc)
    validation_accuracy = np.asarray(result.validation["accuracy"], np.float64)
    ood_values = validation_accuracy if ood_ranking == "accuracy" else np.asarray(
        result.validation[robustness_name], np.float64
    )
    class_members = voting.band_members(validation_accuracy, bands)
    ood_members = voting.band_members(ood_values, bands)
    thresholds = voting.tpr_threshold(outputs.reference_scores, tpr)
    scored = jax.device_get(band_metrics(outputs, labels, thresholds, class_members, ood_members))

    rows = []
    for index, band in enumerate(bands):
        in_class, in_ood = class_members[index], ood_members[index]

        def value(name, selected, index=index):
            return float(getattr(scored, name)[index]) if selected.any() else np.nan

        rows.append(BandEnsemble(
            band=band,
            class_members=tuple(np.flatnonzero(in_class).tolist()),
            majority_vote_accuracy=value("majority_vote_accuracy", in_class),
            soft_vote_accuracy=value("soft_vote_accuracy", in_class),
            best_member_accuracy=_best(member_accuracy, in_class),
            chosen_member_accuracy=_chosen(member_accuracy, validation_accuracy, in_class),
            ood_members=tuple(np.flatnonzero(in_ood).tolist()),
            mean_score_auroc=value("mean_score_auroc", in_ood),
            vote_accuracy=value("vote_accuracy", in_ood),
            vote_tpr=value("vote_tpr", in_ood),
            vote_fpr=value("vote_fpr", in_ood),
            vote_auroc=value("vote_auroc", in_ood),
            paper_vote_auroc=value("paper_vote_auroc", in_ood),
            best_member_auroc=_best(member_auroc, in_ood),
            best_member_auroc_paper=_best(member_auroc_paper, in_ood),
            chosen_member_auroc=_chosen(member_auroc, ood_values, in_ood),
        ))
    return EnsembleComparison(
        bands=tuple(rows),
        tpr=float(tpr),
        ood_ranking=ood_ranking,
        member_accuracy=member_accuracy,
        member_auroc=member_auroc,
        member_auroc_paper=member_auroc_paper,
        best_accuracy=float(member_accuracy.max()),
        best_auroc=float(member_auroc.max()),
        baseline_accuracy=float(result.baseline_test["accuracy"]),
        baseline_auroc=float(result.baseline_test["auroc"]),
    )


def _best(values: np.ndarray, selected: np.ndarray) -> float:
    return float(values[selected].max()) if selected.any() else np.nan


def _chosen(values: np.ndarray, ranking: np.ndarray, selected: np.ndarray) -> float:
    """``values`` of the selected member ranked highest (the first of equals)."""
    if not selected.any():
        return np.nan
    return float(values[np.flatnonzero(selected)[np.argmax(ranking[selected])]])


def _check_features_fit(result, features) -> None:
    num_features = np.asarray(result.params.hidden_kernel).shape[-2]
    if features.num_features != num_features:
        raise ValueError(
            f"features {features.name!r} have D = {features.num_features}, the run's heads D = {num_features}"
        )
    num_classes = np.asarray(result.params.output_bias).shape[-1]
    if features.num_classes != num_classes:
        raise ValueError(
            f"features {features.name!r} have C = {features.num_classes} classes, "
            f"the run's heads {num_classes}"
        )


def _check_reproduction(result, member_accuracy, member_auroc, num_test) -> None:
    recorded_accuracy = np.asarray(result.test["accuracy"], np.float64)
    recorded_auroc = np.asarray(result.test["auroc"], np.float64)
    accuracy_gap = np.abs(member_accuracy - recorded_accuracy)
    auroc_gap = np.abs(member_auroc - recorded_auroc)
    worst = int(np.argmax(accuracy_gap))
    if accuracy_gap[worst] > _REPRODUCTION_TOLERANCE_SAMPLES / num_test + 1e-6:
        raise ValueError(
            f"the features do not reproduce the run: member {worst} has test accuracy "
            f"{member_accuracy[worst]:.4f} on them, the run recorded {recorded_accuracy[worst]:.4f} "
            "(are these the features the run was started with?)"
        )
    worst = int(np.argmax(auroc_gap))
    if auroc_gap[worst] > _REPRODUCTION_TOLERANCE_AUROC:
        raise ValueError(
            f"the features do not reproduce the run: member {worst} has test AUROC "
            f"{member_auroc[worst]:.4f} on them, the run recorded {recorded_auroc[worst]:.4f} "
            "(are these the features the run was started with?)"
        )
