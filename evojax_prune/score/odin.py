"""ODIN out-of-distribution scores: temperature-scaled maximum softmax.

ODIN (Liang, Li & Srikant, "Enhancing the reliability of out-of-distribution
image detection in neural networks", ICLR 2018, arXiv 1706.02690) scores an
input by the largest softmax probability S of its logits divided by a
temperature T; in-distribution (InD) inputs score higher. MO-EvoPruneDeepTL
uses T = 1000 and no input perturbation (docs/PROTOCOL.md, "Robustness objective").
At T = 1 it is the maximum softmax probability (MSP, ``ood_scores.msp_score``).

What is returned. Only the ranking of S matters (AUROC, FPR@TPR and AUPR count
pairs and thresholds; ``metrics``), and S itself cannot carry it in float32 at
either end of the temperature range, so ``odin_score`` returns the log-odds of
the top class against the mean of the others,

    odin_score = log(S / mean_{j != top} p_j) = log((C - 1) S / (1 - S))
               = (l_top - l_2nd) / T - log(mean_{j != top} exp((l_j - l_2nd) / T)),

with p = softmax(l / T) and l_2nd the runner-up logit: a strictly increasing
function of S (so every ranking metric is S's in exact arithmetic), 0 when all
logits are equal (S = 1 / C) and unbounded as S -> 1; with two classes it is
the logit margin over T. Both terms are >= 0 and each is computed to a few
float32 ulps of relative precision (measured against float64: at most 4e-7
relative over C = 2 to 1000, T = 0.1 to 1e6, logit scales 0.01 to 200), so
the float32 ranking is S's except for pairs closer than float32 can represent.

Why not S, nor log S. At large T every probability sits within about |l| / T
of 1 / C, so a float32 softmax keeps only the last few bits for what separates
inputs (at T = 1000, C = 3 or 10, logit std 5-20: pairs whose float64 scores
differ by 1e-4 relative tie or reverse, a few per 1000 samples, enough to move
the AUROC); the first term above takes that spread exactly and the second
keeps it relative (``log1p`` of a mean of ``expm1``). At small T (MSP) a
confident head's S is 1 - 1e-9 and rounds to 1, and log S = -log1p(sum_{j !=
top} exp(l_j - l_top)) ~ -sum exp(gap) *underflows to exactly 0* once every
gap passes float32's exp range (exp(x) < 2^-126 for x < -87.3; XLA's CPU
backend flushes subnormals), and log(C S) rounds to log C once the gaps pass
about 17: every such sample ties, InD and OoD alike. Logits of scale 40, two
classes, 500 + 500 samples: the AUROC of log S was off the float64 ranking's
by up to 0.006 (0.06 at scale 200), that of log(C S) at T = 1 by 0.06 (0.09);
issue 33, finding 10. The log-odds never exponentiates a gap to the top class
(the lead enters as a difference, the rest relative to the runner-up, whose
exp is 1), so nothing underflows at any T or logit scale. Shifting by the
largest term before exponentiating is the log-sum-exp trick; its accuracy is
analysed by Blanchard, Higham & Higham, "Accurately computing the log-sum-exp
and softmax functions", IMA J. Numer. Anal. 41(4), 2021.

``max_softmax_probability`` gives S itself when the value is wanted; recover it
from a score as ``1 / (1 + (C - 1) exp(-score))`` (1.0 once the score passes
about 17 + log(C - 1), where float32's S has no more digits).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

DEFAULT_TEMPERATURE = 1000.0


def _scaled_gaps(logits: jax.Array, temperature: float) -> jax.Array:
    """(l_j - l_max) / T, all <= 0, in float32: (..., C) -> (..., C)."""
    logits = jnp.asarray(logits, jnp.float32)
    # Subtracting the maximum before dividing keeps the small gaps exact where
    # l_j and l_max are close (Sterbenz), instead of rounding l / T first.
    return (logits - jnp.max(logits, axis=-1, keepdims=True)) / temperature


def _neg_log_mean_exp(behind: jax.Array, included: jax.Array) -> jax.Array:
    """``-log(mean_{j included} exp(behind_j))`` to a few ulps: (..., C) -> (...,) float32.

    Every ``behind_j`` is <= 0 and one included entry is 0, so the mean lies in
    [1 / k, 1] (k included entries) and the result in [0, log k].

    Args:
      behind: (..., C) float32, <= 0, the largest included entry 0.
      included: (..., C) bool, at least one True per row.
    """
    count = jnp.sum(included, axis=-1)
    # Near 1 (the classes bunched, as at T = 1000) the mean's own rounding is
    # what separates inputs: take 1 - mean as a mean of expm1, never adding
    # the 1, and log1p of it. Far below 1 that sum would cancel instead, and
    # the plain log of the mean of exps is the well-conditioned form.
    bunched = jnp.sum(jnp.where(included, jnp.expm1(behind), 0.0), axis=-1) / count
    spread = jnp.sum(jnp.where(included, jnp.exp(behind), 0.0), axis=-1) / count
    return jnp.where(bunched >= -0.5, -jnp.log1p(bunched), -jnp.log(spread))


def odin_score(logits: jax.Array, temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
    """ODIN's score as log-odds: ``log(S / mean_{j != top} p_j)``, p = softmax(logits / T), S = max p.

    A strictly increasing function of ODIN's maximum softmax probability S, so
    it ranks inputs exactly as S does (higher means more in-distribution),
    kept exact in float32 at any T and logit scale (the module docstring says
    why S and log S are not). Values lie in [0, inf): 0 when all logits are
    equal (S = 1 / C); with two classes, the logit margin over T. Recover S
    with ``1 / (1 + (C - 1) exp(-score))`` or use ``max_softmax_probability``.

    Args:
      logits: (..., C) float logits, e.g. (N, C) or (P, N, C); cast to float32.
      temperature: softmax temperature T > 0 (ODIN and the authors: 1000; MSP: 1).

    Returns:
      (...,) float32 scores; zeros when C = 1 (S = 1 for every input).

    Reference: Liang et al. 2018, arXiv 1706.02690, Eq. (1)-(2).
    """
    logits = jnp.asarray(logits, jnp.float32)
    num_classes = logits.shape[-1]
    if num_classes == 1:
        return jnp.zeros(logits.shape[:-1], jnp.float32)
    # The first maximum only: with a tie for the top the other one is the
    # runner-up, the lead is 0 and the score is that of the rest.
    is_top = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=bool)
    top = jnp.max(logits, axis=-1, keepdims=True)
    runner_up = jnp.max(jnp.where(is_top, -jnp.inf, logits), axis=-1, keepdims=True)
    # log(S / p_2nd): a difference of logits, never an exp, so a lead of any
    # size is kept (this is what log S loses once exp(-lead) underflows).
    lead = (top - runner_up)[..., 0] / temperature
    # log(p_2nd / mean_{j != top} p_j), in [0, log(C - 1)]. Logits subtracted
    # before dividing, as in ``_scaled_gaps``; the top class, left out, is
    # first set to the runner-up so that no inf enters the unused terms.
    behind = (jnp.where(is_top, runner_up, logits) - runner_up) / temperature
    return lead + _neg_log_mean_exp(behind, ~is_top)


def max_softmax_probability(logits: jax.Array, temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
    """ODIN's score as a probability: ``max_j softmax(logits / T)_j`` in [1 / C, 1].

    Args:
      logits: (..., C) float logits; cast to float32.
      temperature: softmax temperature T > 0.

    Returns:
      (...,) float32 probabilities. At T = 1000 these cluster near 1 / C and
      tie in float32, at T = 1 a confident head's round to 1.0; rank with
      ``odin_score`` instead.
    """
    gaps = _scaled_gaps(logits, temperature)
    # The largest entry of softmax is exp(0) / sum_j exp(gap_j).
    return 1.0 / jnp.sum(jnp.exp(gaps), axis=-1)


def odin_perturb(
    logit_fn: Callable[[jax.Array], jax.Array],
    features: jax.Array,
    epsilon: float,
    temperature: float = DEFAULT_TEMPERATURE,
) -> jax.Array:
    """ODIN's input preprocessing, applied to features instead of pixels.

    ``x_tilde = x - epsilon * sign(-grad_x log S(x; T))``, where S is the
    temperature-scaled softmax probability of the predicted class. The step
    raises every input's score; ODIN relies on InD inputs gaining more than OoD
    ones. This is a *variant*: the original perturbs image pixels, and here
    only the backbone's features are available, so the step is taken in
    feature space. The paper's setting (and this project's default) is
    ``epsilon = 0``, which returns ``features`` unchanged without taking a
    gradient.

    The gradient taken is that of ``odin_score``, S's log-odds: per sample a
    positive multiple of grad log S (both are increasing functions of S), so
    its sign, all the step uses, is ODIN's. Taken in float32 through
    ``log_softmax`` it is not: grad log S = (1 - S) grad l_top - sum_{j != top}
    p_j grad l_j, and once the other classes' mass falls below half an ulp of
    1 (gaps past about 17 T, a confident head at T = 1) S rounds to 1, the
    first term vanishes and the rest points elsewhere; past 87 T the p_j
    underflow too and the sample stays put. (Scale-40 logits of a random
    linear head, C = 3, T = 1: 347 of 2400 feature signs reversed, 588 zero.)
    The log-odds' gradient is a sum of (grad l_top - grad l_j) weighted by a
    softmax over the non-top classes, which neither cancels nor all
    underflows.

    Args:
      logit_fn: maps (N, D) features to (N, C) logits, row by row: sample i's
        logits may depend only on row i (true of ``head.apply``), so the
        gradient of the summed scores is every sample's own gradient.
      features: (N, D) float features.
      epsilon: step size >= 0, in feature units. A Python float (it decides
        statically whether a gradient is taken).
      temperature: softmax temperature T > 0.

    Returns:
      (N, D) perturbed features, same dtype as ``features``.

    Reference: Liang et al. 2018, arXiv 1706.02690, Eq. (2).
    """
    if epsilon == 0:
        return features

    def summed_scores(x: jax.Array) -> jax.Array:
        # The predicted and runner-up classes are piecewise constant in x, so
        # the gradient flows through the logits' differences only, as in ODIN.
        return jnp.sum(odin_score(logit_fn(x), temperature))

    gradient = jax.grad(summed_scores)(features)
    return features - epsilon * jnp.sign(-gradient)
