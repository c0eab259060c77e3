"""Classification and out-of-distribution (OoD) detection metrics, in pure jnp.

Every function takes the scores of one detector: ``ind_scores`` (n,) for the
in-distribution (InD) samples and ``ood_scores`` (m,) for the OoD samples, a
higher score meaning "more in-distribution" (e.g. ``odin.odin_score``). All
are jit-compatible; for a population of P detectors, ``jax.vmap`` them over a
leading axis: ``jax.vmap(auroc)(ind (P, n), ood (P, m)) -> (P,)``. Sample
counts are static (they come from shapes), so index arithmetic that depends on
them is done once, in NumPy, at trace time.

Ranking metrics are computed by sorting once and counting with binary search,
O((n + m) log(n + m)) per detector instead of the O(n m) pairwise comparison,
and they count ties exactly (no random tie breaking), so the same scores always
give the same value. Scores must not be NaN: NaN sorts last and compares
false, so it would be counted as neither above nor below anything.

Only the scores' order enters (comparisons, never a score value; no threshold
is returned): every metric here is unchanged, count for count, by any strictly
increasing transform of the scores. That is why the softmax scores may be
returned as log-odds rather than probabilities (``odin.odin_score``,
``ood_scores.msp_score``): the figures are the probabilities' own, without the
ties float32 probabilities would introduce.

Conventions (they differ between papers; reports should say which is used):
  * ``fpr_at_tpr``: InD is the positive class, as in the ODIN paper (Liang et
    al. 2018, arXiv 1706.02690). OpenOOD v1.5 takes OoD as positive instead,
    which gives a different number.
  * ``aupr_in`` / ``aupr_out``: average precision exactly as scikit-learn's
    ``average_precision_score`` defines it (a step sum, no interpolation).
    OpenOOD instead integrates the precision-recall curve with the trapezoid
    rule (``sklearn.metrics.auc``), which differs slightly.
  * ``auroc``: exact; ``auroc_paper``: the MO-EvoPruneDeepTL authors'
    100-threshold approximation, kept to compare with their figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# int32 sums of pair counts overflow past 2**31; beyond this many (n * m) pairs
# the Mann-Whitney count is summed in float32 instead (exact up to 2**24).
_MAX_EXACT_INT32_PAIRS = 2**30


def fraction(count: jax.Array, total: int | jax.Array) -> jax.Array:
    """``count / total`` as float32, exactly 0 and 1 at the ends and never above 1.

    XLA may compute a quotient as ``count * (1 / total)`` or with an approximate
    vectorised division (about 1 ulp off), which would turn a perfect score of
    1 into 0.99999994 or 1.0000001 and make ``1 - score`` negative.

    Args:
      count: float or int array, 0 <= count <= total.
      total: positive count, static or traced, broadcastable to ``count``.

    Returns:
      float32 array of ``count``'s shape.
    """
    count = jnp.asarray(count, jnp.float32)
    # float32 also takes static totals past int32 (2 n m pairs can exceed 2**31).
    total = jnp.asarray(total, jnp.float32)
    return jnp.where(count >= total, 1.0, jnp.minimum(count / total, 1.0))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of samples whose largest logit is the true class.

    Args:
      logits: (N, C) float logits (or probabilities).
      labels: (N,) int class indices in [0, C).

    Returns:
      () float32. Ties in the logits go to the lowest class index (argmax).
    """
    predictions = jnp.argmax(logits, axis=-1)
    return fraction(jnp.sum(predictions == labels), labels.shape[-1])


def _below(sorted_reference: jax.Array, queries: jax.Array) -> jax.Array:
    """#reference < q for each query, by binary search: (k,) int32."""
    return jnp.searchsorted(sorted_reference, queries, side="left")


def _at_or_below(sorted_reference: jax.Array, queries: jax.Array) -> jax.Array:
    """#reference <= q for each query, by binary search: (k,) int32."""
    return jnp.searchsorted(sorted_reference, queries, side="right")


def _auroc_from_counts(ood_below_ind, ood_at_or_below_ind, num_ind: int, num_ood: int) -> jax.Array:
    """Mann-Whitney AUROC from, per InD sample, #OoD < it and #OoD <= it."""
    # below + at_or_below = 2 * (#less) + #equal: twice the half-counted wins.
    doubled_wins = ood_below_ind + ood_at_or_below_ind
    if num_ind * num_ood <= _MAX_EXACT_INT32_PAIRS:
        total = jnp.sum(doubled_wins)
    else:
        total = jnp.sum(doubled_wins.astype(jnp.float32))
    return fraction(total, 2 * num_ind * num_ood)


def auroc(ind_scores: jax.Array, ood_scores: jax.Array) -> jax.Array:
    """Exact area under the ROC curve, InD vs OoD, ties counted as one half.

    The Mann-Whitney statistic: the probability that a random InD sample scores
    higher than a random OoD sample, plus half the probability of a tie,

        AUROC = (1 / (n m)) sum_i [#{j: o_j < x_i} + 0.5 #{j: o_j = x_i}],

    which equals the trapezoid area under the full ROC curve (Hanley & McNeil
    1982, Radiology 143:29-36) and scikit-learn's ``roc_auc_score`` with InD
    labelled 1. It is the rank-sum formula with average ranks for ties, counted
    per InD sample by two binary searches in the sorted OoD scores:
    O((n + m) log m). It does not depend on which class is called positive.

    Args:
      ind_scores: (n,) float scores of InD samples, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.

    Returns:
      () float32 in [0, 1]: 1 perfect separation, 0.5 chance or all scores
      equal, 0 reversed.
    """
    num_ind, num_ood = ind_scores.shape[-1], ood_scores.shape[-1]
    sorted_ood = jnp.sort(ood_scores)
    return _auroc_from_counts(
        _below(sorted_ood, ind_scores), _at_or_below(sorted_ood, ind_scores), num_ind, num_ood
    )


def paper_tpr_quantile_indices(num_ind: int) -> np.ndarray:
    """Indices into the ascending InD scores used as thresholds by ``auroc_paper``.

    The authors' quantile levels are 0.99, 0.98, ..., 0.01, 0 with the first one
    replaced by 0.99999999 (so its threshold is the largest InD score); level q
    picks ``sorted_ind[int(num_ind * q)]``. Computed in float64 exactly as their
    NumPy code does, so the rounding of ``int(n * q)`` matches theirs.

    Returns:
      (100,) int64 indices, non-increasing.
    """
    levels = np.arange(0.0, 1.0, 0.01)[::-1].copy()
    levels[0] = 0.99999999
    return (num_ind * levels).astype(np.int64)


def auroc_paper(ind_scores: jax.Array, ood_scores: jax.Array) -> jax.Array:
    """The MO-EvoPruneDeepTL authors' threshold AUROC, for comparison with their figures.

    Reconstructed from their ``ood.py`` (github.com/ari-dasci/S-MOEvoPruneDeepTL;
    PROTOCOL.md, "Robustness objective"). Reading of their procedure:

      1. Sort the InD scores ascending; for the 100 quantile levels q = 0.99999999,
         0.98, 0.97, ..., 0.01, 0 take the threshold ``t_q = sorted_ind[int(n q)]``
         (``paper_tpr_quantile_indices``). A sample is called InD when its score
         is strictly greater than ``t_q``, so the TPR aimed at is about 1 - q:
         0, 0.02, 0.03, ..., 1 (the 0.01 point is lost to the replaced level).
      2. TPR = fraction of InD scores > t_q, except that the first threshold is
         forced to TPR 0 and the last (the smallest InD score) to TPR 1.
      3. FPR = fraction of OoD scores > t_q, never forced.
      4. Append the point (FPR, TPR) = (1, 1) and take the trapezoid area over
         FPR (``np.trapz``). No (0, 0) point is prepended.

    Differences from the exact ``auroc`` worth knowing: the curve is sampled at
    100 InD quantiles only; OoD scores tied with a threshold count as OoD while
    the forced last point counts every InD score as InD, so all-equal scores
    give 1.0 (the exact AUROC gives 0.5); and the area left of the first
    point's FPR (OoD scores above every InD score) is dropped. Perfect
    separation gives 1.0 and reversed separation 0.0, as for the exact AUROC.

    The area is integrated on integer counts, so it is exact (for n m up to
    2**30; float32 beyond).

    Args:
      ind_scores: (n,) float scores of InD samples, n >= 1, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.

    Returns:
      () float32 in [0, 1].
    """
    num_ind, num_ood = ind_scores.shape[-1], ood_scores.shape[-1]
    sorted_ind = jnp.sort(ind_scores)
    thresholds = sorted_ind[paper_tpr_quantile_indices(num_ind)]
    return _auroc_paper_from_counts(
        _at_or_below(sorted_ind, thresholds), _at_or_below(jnp.sort(ood_scores), thresholds), num_ind, num_ood
    )


def _auroc_paper_from_counts(ind_at_or_below, ood_at_or_below, num_ind: int, num_ood: int) -> jax.Array:
    """The authors' trapezoid from #InD <= t and #OoD <= t at their 100 thresholds t."""
    # Called InD means score > t, so the positives are total - #(score <= t).
    true_positives = (num_ind - ind_at_or_below).at[0].set(0).at[-1].set(num_ind)
    false_positives = num_ood - ood_at_or_below
    # The trapezoid is integrated on integer counts and scaled once at the end:
    # exact, whereas float rates can be 1 ulp off under XLA (3 / 3 computed as
    # 1.0000001 made a reversed detector score 7e-7 instead of 0).
    true_positives = jnp.append(true_positives, num_ind)
    false_positives = jnp.append(false_positives, num_ood)
    if num_ind * num_ood > _MAX_EXACT_INT32_PAIRS:
        true_positives = true_positives.astype(jnp.float32)
        false_positives = false_positives.astype(jnp.float32)
    doubled_area = jnp.sum(jnp.diff(false_positives) * (true_positives[1:] + true_positives[:-1]))
    return fraction(doubled_area, 2 * num_ind * num_ood)


def _min_positives_for_tpr(num_positives: int, tpr: float) -> int:
    """Smallest k with k / n >= tpr, compared in float64 as scikit-learn's ``roc_curve`` rates are."""
    return int(np.searchsorted(np.arange(num_positives + 1) / num_positives, tpr, side="left"))


def fpr_at_tpr(ind_scores: jax.Array, ood_scores: jax.Array, tpr: float = 0.95) -> jax.Array:
    """False-positive rate at the first threshold that reaches a true-positive rate.

    InD is the positive class (the ODIN paper's convention, Liang et al. 2018):
    a sample is called InD when its score is >= a threshold t; TPR is the
    fraction of InD samples called InD and FPR the fraction of OoD samples
    called InD. Returns the smallest FPR over thresholds with TPR >= ``tpr``,
    i.e. ``fpr[argmax(tpr_curve >= tpr)]`` on scikit-learn's ``roc_curve`` with
    InD labelled 1. OpenOOD v1.5 labels OoD as positive instead (and negates the
    scores), which in general gives a different value.

    The optimal threshold is the k-th largest InD score with k the fewest InD
    samples that reach ``tpr``, so one sort and one binary search suffice.

    Args:
      ind_scores: (n,) float scores of InD samples, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.
      tpr: target true-positive rate in [0, 1], a Python float (static).

    Returns:
      () float32 in [0, 1]; lower is better. "FPR95" for ``tpr = 0.95``.
    """
    num_ood = ood_scores.shape[-1]
    threshold = _fpr_threshold(jnp.sort(ind_scores), tpr)
    if threshold is None:
        # The threshold above every score already meets the target: nothing is
        # called InD, so nothing is a false positive.
        return jnp.zeros((), jnp.float32)
    return _fpr_from_count(_below(jnp.sort(ood_scores), threshold), num_ood)


def _fpr_threshold(sorted_ind: jax.Array, tpr: float) -> jax.Array | None:
    """The k-th largest InD score, k the fewest InD samples reaching ``tpr``; None when k = 0."""
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"fpr_at_tpr: tpr must be in [0, 1], got {tpr!r}")
    num_ind = sorted_ind.shape[-1]
    needed = _min_positives_for_tpr(num_ind, tpr)
    return None if needed == 0 else sorted_ind[num_ind - needed]


def _fpr_from_count(ood_below_threshold: jax.Array, num_ood: int) -> jax.Array:
    """FPR = #OoD >= threshold / m, from #OoD < threshold."""
    return fraction(num_ood - ood_below_threshold, num_ood)


def average_precision(positive_scores: jax.Array, negative_scores: jax.Array) -> jax.Array:
    """Average precision of "score high = positive", as scikit-learn defines it.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in
    decreasing order (``sklearn.metrics.average_precision_score``), with tied
    scores forming one threshold. Recall only grows at thresholds equal to a
    positive's score, so this is the mean, over positives, of the precision at
    that positive's own score:

        AP = (1 / n) sum_i #{pos >= x_i} / (#{pos >= x_i} + #{neg >= x_i}).

    Args:
      positive_scores: (n,) float scores of the positive class.
      negative_scores: (m,) float scores of the negative class.

    Returns:
      () float32 in (0, 1].
    """
    num_positive = positive_scores.shape[-1]
    num_negative = negative_scores.shape[-1]
    positives_at_or_above = num_positive - _below(jnp.sort(positive_scores), positive_scores)
    negatives_at_or_above = num_negative - _below(jnp.sort(negative_scores), positive_scores)
    return _average_precision_from_counts(positives_at_or_above, negatives_at_or_above)


def _average_precision_from_counts(positives_at_or_above, negatives_at_or_above) -> jax.Array:
    """Mean over positives of the precision at the positive's own score."""
    precision = fraction(positives_at_or_above, positives_at_or_above + negatives_at_or_above)
    return fraction(jnp.sum(precision), positives_at_or_above.shape[-1])


def aupr_in(ind_scores: jax.Array, ood_scores: jax.Array) -> jax.Array:
    """Area under the precision-recall curve with InD as positive (sklearn average precision).

    ``average_precision_score(y, s)`` with InD labelled 1 and the scores as
    given. Its chance level is n / (n + m).

    Args:
      ind_scores: (n,) float scores of InD samples, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.

    Returns:
      () float32 in (0, 1].
    """
    return average_precision(ind_scores, ood_scores)


def aupr_out(ind_scores: jax.Array, ood_scores: jax.Array) -> jax.Array:
    """Area under the precision-recall curve with OoD as positive (sklearn average precision).

    ``average_precision_score(y, -s)`` with OoD labelled 1 and the scores
    negated, so that "more OoD" scores higher. Its chance level is m / (n + m).

    Args:
      ind_scores: (n,) float scores of InD samples, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.

    Returns:
      () float32 in (0, 1].
    """
    return average_precision(-ood_scores, -ind_scores)


FPR_TPR = 0.95  # the true-positive rate of ``ood_metrics``' "fpr95"


def ood_metrics(ind_scores: jax.Array, ood_scores: jax.Array) -> dict[str, jax.Array]:
    """All OoD metrics of one detector from two sorts and four batched binary searches.

    Equal, count for count, to calling ``auroc``, ``auroc_paper``,
    ``fpr_at_tpr(..., 0.95)``, ``aupr_in`` and ``aupr_out`` one by one, which
    would sort the same arrays and search them nine times. Sharing the work
    cuts the run time by about a third for the same compile time
    (docs/benchmarks.md, "Measurements behind the docstrings").

    Args:
      ind_scores: (n,) float scores of InD samples, higher = more InD.
      ood_scores: (m,) float scores of OoD samples.

    Returns:
      {"auroc", "auroc_paper", "fpr95", "aupr_in", "aupr_out"}: () float32 each.
    """
    num_ind, num_ood = ind_scores.shape[-1], ood_scores.shape[-1]
    sorted_ind, sorted_ood = jnp.sort(ind_scores), jnp.sort(ood_scores)
    paper_thresholds = sorted_ind[paper_tpr_quantile_indices(num_ind)]
    fpr_threshold = _fpr_threshold(sorted_ind, FPR_TPR)
    fpr_queries = () if fpr_threshold is None else (fpr_threshold[None],)

    # One search per (sorted array, side), every query that needs it batched.
    ood_below = _below(sorted_ood, jnp.concatenate([ind_scores, *fpr_queries]))
    ood_at_or_below = _at_or_below(sorted_ood, jnp.concatenate([ind_scores, ood_scores, paper_thresholds]))
    ind_below_ind = _below(sorted_ind, ind_scores)
    ind_at_or_below = _at_or_below(sorted_ind, jnp.concatenate([ood_scores, paper_thresholds]))

    ood_below_ind = ood_below[:num_ind]
    ood_at_or_below_ind = ood_at_or_below[:num_ind]
    ood_at_or_below_ood = ood_at_or_below[num_ind:num_ind + num_ood]
    ood_at_or_below_paper = ood_at_or_below[num_ind + num_ood:]
    ind_at_or_below_ood = ind_at_or_below[:num_ood]
    ind_at_or_below_paper = ind_at_or_below[num_ood:]
    if fpr_threshold is None:
        fpr95 = jnp.zeros((), jnp.float32)
    else:
        fpr95 = _fpr_from_count(ood_below[num_ind], num_ood)
    return {
        "auroc": _auroc_from_counts(ood_below_ind, ood_at_or_below_ind, num_ind, num_ood),
        "auroc_paper": _auroc_paper_from_counts(
            ind_at_or_below_paper, ood_at_or_below_paper, num_ind, num_ood
        ),
        "fpr95": fpr95,
        # InD positive: at or above an InD score x_i.
        "aupr_in": _average_precision_from_counts(num_ind - ind_below_ind, num_ood - ood_below_ind),
        # OoD positive on negated scores: "at or above -o_j" is "at or below o_j".
        "aupr_out": _average_precision_from_counts(ood_at_or_below_ood, ind_at_or_below_ood),
    }
