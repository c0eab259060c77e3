"""Votes of ensemble members: percentile bands, majority and soft votes, out-of-distribution votes.

The primitives of the authors' ensembles, on arrays of member outputs: this
module knows nothing of runs, fronts or features (``ensemble.py`` computes the
members' outputs from a finished run, cuts the bands and compares the
ensembles with single members). MO-EvoPruneDeepTL (Poyatos et al., arXiv
2302.10253) combines Pareto-front members of similar quality into ensembles
(docs/PROTOCOL.md, "Published figures").

Reading of the authors' procedure (``ensemble/plots_ensembles_accuracy.py`` and
``ensemble/plot_ensembles_OoD.py`` in github.com/ari-dasci/S-MOEvoPruneDeepTL):

  * Bands. For each pair (lo, hi) of ``AUTHORS_BANDS`` = (50, 60), (55, 65),
    ..., (85, 95), overlapping bands ten percentile points wide every five,
    the members whose accuracy a satisfies
    ``np.percentile(accs, lo) <= a <= np.percentile(accs, hi)`` (NumPy's
    default linear interpolation, both ends inclusive) form one ensemble
    (``band_members``). The OoD ensembles are banded the same way on the
    members' AUROC instead.
  * Classification: majority vote of the members' predicted classes,
    ``argmax(bincount(votes))``, so a tie goes to the lowest class index
    (``majority_vote``).
  * OoD: each member calls a sample in-distribution (InD) when its ODIN score
    is above a threshold; the ensemble calls InD by majority, a tie going to
    OoD (``argmax(bincount)`` over {0: OoD, 1: InD}). The authors swept the
    100 thresholds of their AUROC (``metrics.auroc_paper``), each member's
    own, and integrated the ensemble's (FPR, TPR) curve
    (``paper_vote_auroc``).

Beside the authors' votes: the soft vote (``soft_vote``, mean class
probabilities); the OoD vote a deployed ensemble would use, every member
thresholding its score at 95% TPR on InD reference data (``tpr_threshold``,
InD positive, as ``metrics.fpr_at_tpr``) and the ensemble calling InD by
majority (``threshold_vote``, with its accuracy, TPR and FPR and the AUROC of
the vote count); and its soft counterpart, the mean OoD score over members
(``mean_score``).

Shapes: K members, N InD and M OoD samples, C classes, B bands.

  * ``band_members``: (K,) values -> (B, K) bool.
  * ``majority_vote``: (K, N) int classes -> (N,) int32; ``soft_vote``:
    (K, N, C) probabilities -> (N, C) float32.
  * ``mean_score``: (K, N) scores -> (N,) float32; ``tpr_threshold``:
    (..., n) reference scores -> (...,) thresholds; ``threshold_vote``:
    (K, N), (K, M) scores and (K,) thresholds -> ``VoteResult``;
    ``paper_vote_auroc``: (K, N), (K, M) scores -> () float32.

Scores are higher = more InD. The vote functions are pure and jit-compatible
and take a ``members (K,) bool`` selection instead of a subset (``None``: all
members), so one compiled program serves every band (and ``jax.vmap`` runs
all bands at once, ``ensemble.band_metrics``). Cutting the bands
(``band_members``) is NumPy on K numbers, on purpose: it must match
``np.percentile`` in float64 at the band edges, where ties between members
are common (accuracies are multiples of 1 / N), and JAX computes in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evojax_prune.score import metrics

# The authors' eight bands of percentiles; WHOLE_FRONT is one band of every member.
AUTHORS_BANDS: tuple[tuple[float, float], ...] = (
    (50, 60), (55, 65), (60, 70), (65, 75), (70, 80), (75, 85), (80, 90), (85, 95),
)
WHOLE_FRONT: tuple[float, float] = (0, 100)
DEFAULT_TPR = 0.95


# --------------------------------------------------------------------------- selecting members


def band_members(values: np.ndarray, bands: Sequence[tuple[float, float]] = AUTHORS_BANDS) -> np.ndarray:
    """Which members fall in each percentile band of ``values``, as the authors cut them.

    Args:
      values: (K,) float, one number per member (e.g. validation accuracy).
      bands: B pairs (lo, hi) of percentiles, 0 <= lo <= hi <= 100.

    Returns:
      (B, K) bool: member k is in band b when
      ``np.percentile(values, lo) <= values[k] <= np.percentile(values, hi)``
      (linear interpolation, float64, both ends inclusive). Never empty for
      K >= 1 and lo = 0 or hi = 100; a narrow band between two members'
      values can be empty.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"band_members: values must be (K,) with K >= 1, found shape {values.shape}")
    bands = checked_bands(bands)
    edges = np.percentile(values, np.asarray(bands, np.float64))  # (B, 2): each band's two values
    lows, highs = edges[:, 0], edges[:, 1]
    return (values[None, :] >= lows[:, None]) & (values[None, :] <= highs[:, None])


def checked_bands(bands: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """``bands`` as a list of (lo, hi) float pairs, each checked: 0 <= lo <= hi <= 100.

    Raises:
      ValueError: a band that is not a pair of numbers, out of order or out of
        [0, 100]; no band at all.
    """
    checked = []
    for band in bands:
        try:
            low, high = (float(edge) for edge in band)
        except (TypeError, ValueError):
            raise ValueError(f"bands: each band must be a (lo, hi) pair of percentiles, got {band!r}") \
                from None
        if not 0 <= low <= high <= 100:
            raise ValueError(f"bands: need 0 <= lo <= hi <= 100, got {band!r}")
        checked.append((low, high))
    if not checked:
        raise ValueError("bands: at least one band is needed")
    return checked


def _all_members(members: jax.Array | None, num_members: int) -> jax.Array:
    return jnp.ones((num_members,), bool) if members is None else jnp.asarray(members, bool)


# --------------------------------------------------------------------------- classification votes


@functools.partial(jax.jit, static_argnames="num_classes")
def majority_vote(predictions: jax.Array, num_classes: int, members: jax.Array | None = None) -> jax.Array:
    """The class most selected members predict, per sample.

    Args:
      predictions: (K, N) int class indices in [0, C), one row per member.
      num_classes: C (static).
      members: (K,) bool, the members that vote; ``None`` means all.

    Returns:
      (N,) int32 classes. A tie goes to the lowest class index (the authors'
      ``argmax(bincount)``); with no member selected every sample gets class 0.
    """
    members = _all_members(members, predictions.shape[0])
    ballots = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)  # (K, N, C)
    # A contraction rather than multiply-and-sum: under vmap over bands it
    # stays one batched product, never a (B, K, N, C) temporary.
    counts = jnp.einsum("k,knc->nc", members.astype(jnp.int32), ballots)  # (N, C)
    # argmax returns the first maximum: the lowest class index among tied ones.
    return jnp.argmax(counts, axis=-1).astype(jnp.int32)


@jax.jit
def soft_vote(probabilities: jax.Array, members: jax.Array | None = None) -> jax.Array:
    """Mean class probabilities of the selected members.

    Args:
      probabilities: (K, N, C) float, e.g. ``jax.nn.softmax(logits)``.
      members: (K,) bool; ``None`` means all.

    Returns:
      (N, C) float32; its argmax is the soft-vote prediction (ties to the
      lowest class index, as ``metrics.accuracy``). NaN with no member selected.
    """
    members = _all_members(members, probabilities.shape[0])
    weights = members.astype(jnp.float32)
    total = jnp.einsum("k,knc->nc", weights, probabilities.astype(jnp.float32))
    return total / jnp.sum(weights)


# --------------------------------------------------------------------------- OoD ensembles


@jax.jit
def mean_score(scores: jax.Array, members: jax.Array | None = None) -> jax.Array:
    """Mean out-of-distribution score of the selected members: the soft OoD ensemble.

    With ``odin.odin_score`` (the log-odds ``log((C - 1) S / (1 - S))`` of the
    max-softmax S) this is the log of the geometric mean of the members' odds;
    at T = 1000, where every S is 1 / C to within about |l| / T and the log-odds
    is linear in S - 1 / C to first order, it ranks samples as the arithmetic
    mean of the max-softmax does, while keeping float32 resolution.

    Args:
      scores: (K, N) float, higher = more in-distribution.
      members: (K,) bool; ``None`` means all.

    Returns:
      (N,) float32. NaN with no member selected.
    """
    members = _all_members(members, scores.shape[0])
    weights = members.astype(jnp.float32)
    return (weights @ scores.astype(jnp.float32)) / jnp.sum(weights)


def _positives_needed(num_samples: int, tpr: float) -> int:
    """Fewest of n InD samples reaching ``tpr``, compared in float64 as ``metrics.fpr_at_tpr`` does."""
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr!r}")
    return int(np.searchsorted(np.arange(num_samples + 1) / num_samples, tpr, side="left"))


@functools.partial(jax.jit, static_argnames="tpr")
def tpr_threshold(reference_scores: jax.Array, tpr: float = DEFAULT_TPR) -> jax.Array:
    """The score threshold at which a detector reaches a true-positive rate on InD data.

    A sample is called InD when its score is >= the threshold (InD positive,
    the ODIN paper's convention, as ``metrics.fpr_at_tpr``). The threshold is
    the k-th largest reference score with k the fewest samples reaching
    ``tpr``, so the detector's TPR on ``reference_scores`` is >= ``tpr``
    (more only where scores tie).

    Args:
      reference_scores: (..., n) float InD scores (the validation split), higher = more InD;
        leading axes are members.
      tpr: target rate in [0, 1], a Python float (static).

    Returns:
      (...,) float32 thresholds; +inf when ``tpr`` = 0 (nothing called InD).
    """
    num_samples = reference_scores.shape[-1]
    needed = _positives_needed(num_samples, tpr)
    if needed == 0:
        return jnp.full(reference_scores.shape[:-1], jnp.inf, jnp.float32)
    return jnp.sort(reference_scores.astype(jnp.float32), axis=-1)[..., num_samples - needed]


@struct.dataclass
class VoteResult:
    """An ensemble's InD/OoD majority vote, InD as the positive class.

    Attributes:
      ind_votes: (N,) int32, members calling each InD sample InD.
      ood_votes: (M,) int32, members calling each OoD sample InD.
      tpr: () float32, fraction of InD samples the ensemble calls InD.
      fpr: () float32, fraction of OoD samples the ensemble calls InD.
      accuracy: () float32, correct InD/OoD calls over all N + M samples.
      auroc: () float32, exact AUROC of the vote count (ties half), i.e. of the
        fraction of members calling a sample InD.
    """

    ind_votes: jax.Array
    ood_votes: jax.Array
    tpr: jax.Array
    fpr: jax.Array
    accuracy: jax.Array
    auroc: jax.Array


@jax.jit
def threshold_vote(
    ind_scores: jax.Array,
    ood_scores: jax.Array,
    thresholds: jax.Array,
    members: jax.Array | None = None,
) -> VoteResult:
    """Majority vote of members' InD/OoD decisions at fixed thresholds.

    Member k calls a sample InD when its score is >= ``thresholds[k]``
    (``tpr_threshold`` on validation data); the ensemble calls it InD when
    more than half of the selected members do, so a tie is OoD, as the
    authors' ``argmax(bincount)`` over {0: OoD, 1: InD} decides.

    Args:
      ind_scores: (K, N) float scores of InD samples, higher = more InD.
      ood_scores: (K, M) float scores of OoD samples.
      thresholds: (K,) float, one per member.
      members: (K,) bool; ``None`` means all.

    Returns:
      VoteResult. With no member selected nothing is called InD.
    """
    members = _all_members(members, ind_scores.shape[0])
    num_ind, num_ood = ind_scores.shape[-1], ood_scores.shape[-1]
    voters = members.astype(jnp.int32)

    def votes(scores):  # (K, n) -> (n,) members calling each sample InD
        return jnp.einsum("k,kn->n", voters, (scores >= thresholds[:, None]).astype(jnp.int32))

    ind_votes, ood_votes = votes(ind_scores), votes(ood_scores)
    num_voters = jnp.sum(voters)
    true_positives = jnp.sum(2 * ind_votes > num_voters)
    false_positives = jnp.sum(2 * ood_votes > num_voters)
    return VoteResult(
        ind_votes=ind_votes,
        ood_votes=ood_votes,
        tpr=metrics.fraction(true_positives, num_ind),
        fpr=metrics.fraction(false_positives, num_ood),
        accuracy=metrics.fraction(true_positives + num_ood - false_positives, num_ind + num_ood),
        auroc=metrics.auroc(ind_votes.astype(jnp.float32), ood_votes.astype(jnp.float32)),
    )


@jax.jit
def paper_vote_auroc(
    ind_scores: jax.Array, ood_scores: jax.Array, members: jax.Array | None = None
) -> jax.Array:
    """The authors' ensemble AUROC: majority votes swept over their 100 thresholds.

    Each member takes the thresholds of ``metrics.auroc_paper`` from its own
    InD scores (``sorted_ind[paper_tpr_quantile_indices(N)]``, an InD/OoD
    call being ``score > threshold``, the first level forced to call no InD
    sample InD and the last every one). At each of the 100 levels the
    ensemble calls a sample InD when more than half of the selected members
    do (a tie is OoD); its TPR and FPR per level, with (1, 1) appended, are
    integrated by the trapezoid rule. With one member this is exactly
    ``metrics.auroc_paper``.

    Args:
      ind_scores: (K, N) float scores of InD samples, higher = more InD.
      ood_scores: (K, M) float scores of OoD samples.
      members: (K,) bool; ``None`` means all.

    Returns:
      () float32 in [0, 1].
    """
    members = _all_members(members, ind_scores.shape[0])
    num_ind, num_ood = ind_scores.shape[-1], ood_scores.shape[-1]
    levels = metrics.paper_tpr_quantile_indices(num_ind)
    thresholds = jnp.sort(ind_scores, axis=-1)[:, levels]  # (K, 100)
    ind_calls = ind_scores[:, None, :] > thresholds[:, :, None]  # (K, 100, N)
    ind_calls = ind_calls.at[:, 0].set(False).at[:, -1].set(True)
    ood_calls = ood_scores[:, None, :] > thresholds[:, :, None]  # (K, 100, M)
    voters = members.astype(jnp.int32)
    num_voters = jnp.sum(voters)

    def majority_count(calls):  # (K, 100, n) -> (100,) samples the ensemble calls InD
        # The calls do not depend on ``members``, so under vmap over bands they
        # are computed once and only this contraction is batched.
        votes = jnp.einsum("k,kln->ln", voters, calls.astype(jnp.int32))
        return jnp.sum(2 * votes > num_voters, axis=-1)

    true_positives = jnp.append(majority_count(ind_calls), num_ind)
    false_positives = jnp.append(majority_count(ood_calls), num_ood)
    # Integrated on integer counts and scaled once, exact as metrics.auroc_paper.
    doubled_area = jnp.sum(jnp.diff(false_positives) * (true_positives[1:] + true_positives[:-1]))
    return metrics.fraction(doubled_area, 2 * num_ind * num_ood)
