"""Out-of-distribution scores of a head, by name: higher means more in-distribution.

``OodConfig.score`` names one; its AUROC (InD vs OoD) is the robustness
objective. Scores of the logits (``LOGIT_SCORES``, each
``(logits (..., C), temperature) -> (...,) float32``):

  * ``odin``: ODIN's temperature-scaled maximum softmax (Liang et al. 2018,
    arXiv 1706.02690; ``odin.odin_score``, T = ``OodConfig.temperature``).
  * ``msp``: the maximum softmax probability (Hendrycks & Gimpel 2017,
    arXiv 1610.02136), i.e. ODIN at T = 1 (``msp_score``).
  * ``maxlogit``: the largest logit (Hendrycks et al., "Scaling
    out-of-distribution detection for real-world settings", arXiv 1911.11132).
  * ``energy``: the negative free energy ``T log sum_j exp(l_j / T)`` (Liu,
    Wang, Owens & Li 2020, arXiv 2010.03759, Eq. (5): the score is -E(x; f);
    T = ``OodConfig.energy_temperature``, the paper's 1 by default).

Both softmax scores are returned as the log-odds of the top class against
the mean of the others, ``log(S / mean_{j != top} p_j)``: a strictly
increasing function of the maximum softmax S, so AUROC, FPR95 and AUPR
(``metrics``: counts of pairs and thresholds, no score value enters them) are
S's, and exact in float32 at any temperature and logit scale. S itself, and
log S, are not: past logit gaps of about 87 T, float32's exp underflows, the
gaps' contribution to log S is exactly 0 and every such sample ties (logits of
scale 40, two classes: the AUROC was off the exact ranking's by up to 0.006
for MSP, 0.06 for ODIN at T = 1; issue 33, finding 10). ``odin``'s module
docstring derives the form and its precision. The other scores carry no
softmax: MaxLogit and the energy are of the logits' scale (the energy's
``log`` adds at most T log C to the largest logit) and keep float32's
relative precision there.

And a score fitted on the training split (``FITTED_SCORES``):

  * ``mahalanobis``: Lee et al. 2018 (arXiv 1807.03888) on the head's last
    hidden layer, ``score/mahalanobis.py``.

Every score is computed per head inside the caller's vmap (``head_scores``).
What to compute is one value, ``OodSpec``, resolved from ``OodConfig`` once
(``OodSpec.from_config``) and passed whole: a pytree whose name and ODIN
perturbation are static (jit's cache key: they pick the program) and whose
temperature is traced (a sweep over T compiles once).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evojax_prune import head
from evojax_prune.config import OodConfig, OodScore, PruneTarget
from evojax_prune.score import mahalanobis, odin


def msp_score(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The maximum softmax probability's log-odds, ``log(MSP / mean_{j != top} p_j)``; T is ignored.

    ODIN's score at T = 1 (``odin.odin_score``), a strictly increasing
    function of the MSP (Hendrycks & Gimpel 2017, arXiv 1610.02136), so every
    ranking metric is the MSP's. Neither the MSP nor its log can carry that
    ranking in float32: a confident head's MSP is 1 - 1e-9 and rounds to 1.0,
    and log MSP ~ -sum_{j != top} exp(l_j - l_top) underflows to exactly 0
    once every gap passes float32's exp range (about 87), tying all such
    samples (the module docstring of ``odin`` has the numbers).

    Args:
      logits: (..., C) float logits; cast to float32.
      temperature: unused (MSP is T = 1); there so that every logit score has one signature.

    Returns:
      (...,) float32 in [0, inf); the MSP is ``1 / (1 + (C - 1) exp(-score))``.
    """
    del temperature
    return odin.odin_score(logits, 1.0)


def max_logit_score(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The largest logit (Hendrycks et al., arXiv 1911.11132): (..., C) -> (...,) float32; T is ignored."""
    del temperature
    return jnp.max(jnp.asarray(logits, jnp.float32), axis=-1)


def energy_score(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """The negative free energy ``T log sum_j exp(l_j / T)`` (Liu et al. 2020, arXiv 2010.03759).

    Computed as ``l_max + T log sum_j exp((l_j - l_max) / T)``: every exponent
    is <= 0 and the sum lies in [1, C], so nothing overflows and the log is
    well conditioned; the result is accurate to a few ulps of ``|l_max|``.

    Args:
      logits: (..., C) float logits; cast to float32.
      temperature: T > 0 (the paper: 1).

    Returns:
      (...,) float32, higher = more in-distribution.
    """
    logits = jnp.asarray(logits, jnp.float32)
    top = jnp.max(logits, axis=-1)
    return top + temperature * jnp.log(jnp.sum(jnp.exp((logits - top[..., None]) / temperature), axis=-1))


LOGIT_SCORES: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "odin": odin.odin_score,
    "msp": msp_score,
    "maxlogit": max_logit_score,
    "energy": energy_score,
}
# Scores whose statistics are fitted per head on the training split (``head_scores``' ``train``).
FITTED_SCORES = ("mahalanobis",)
SCORES = (*LOGIT_SCORES, *FITTED_SCORES)  # config.OOD_SCORES, in the same order (a test checks)
LABELS = {
    "odin": "ODIN", "msp": "MSP", "maxlogit": "MaxLogit", "energy": "energy", "mahalanobis": "Mahalanobis",
}


def score_temperature(config: OodConfig) -> float:
    """The temperature the configured score uses: ODIN's, the energy's, or 1 (unused)."""
    return {"odin": config.temperature, "energy": config.energy_temperature}.get(config.score, 1.0)


@struct.dataclass
class OodSpec:
    """The OoD score a head is scored with, resolved once from ``OodConfig``.

    Attributes:
      temperature: () float32, the score's temperature (ODIN's, the energy's,
        1 for the others, which ignore it); a pytree leaf, so traced.
      score: a name of ``SCORES``; static.
      epsilon: ODIN's feature-space perturbation step (``odin`` only; 0 =
        off, as in the paper); static, since 0 skips the gradient altogether.
    """

    temperature: Any = odin.DEFAULT_TEMPERATURE
    score: OodScore = struct.field(pytree_node=False, default="odin")
    epsilon: float = struct.field(pytree_node=False, default=0.0)

    @classmethod
    def from_config(cls, config: OodConfig) -> OodSpec:
        return cls(temperature=jnp.float32(score_temperature(config)), score=config.score,
                   epsilon=float(config.epsilon))

    @property
    def fitted(self) -> bool:
        """Whether the score is fitted per head on the training split (``head_scores``' ``train``)."""
        return self.score in FITTED_SCORES

    def training_rows(self, train: Any, caller: str) -> tuple[Any, Any] | tuple[()]:
        """``train`` = (x_train (N_t, D), y_train (N_t,)) where the score is fitted on it, else ``()``.

        Host arrays stay numpy (placed on the mesh by the caller). A fitted
        score without them is a ValueError naming ``caller``.
        """
        if not self.fitted:
            return ()
        if train is None or len(train) != 2:
            raise ValueError(
                f"{caller}: the {self.score!r} OoD score is fitted on the training split; pass "
                f"train=(x_train, y_train), got {'nothing' if train is None else f'{len(train)} arrays'}"
            )
        return tuple(array if isinstance(array, jax.Array) else np.asarray(array) for array in train)


DEFAULT_SPEC = OodSpec()  # the paper's: ODIN at T = 1000, no perturbation


def describe(config: OodConfig) -> str:
    """The configured score in words, for reports: e.g. ``"ODIN (max softmax of logits / T, T = 1000)"``."""
    return {
        "odin": f"ODIN (max softmax of logits / T, T = {config.temperature:g})",
        "msp": "MSP (max softmax probability, T = 1)",
        "maxlogit": "MaxLogit (the largest logit)",
        "energy": f"energy (T logsumexp(logits / T), T = {config.energy_temperature:g})",
        "mahalanobis": "Mahalanobis (class means and tied covariance of the last hidden layer, "
                       "fitted on the training split)",
    }[config.score]


def head_scores(
    params: head.HeadParams,
    mask: jax.Array,
    rows: jax.Array,
    *,
    ood: OodSpec,
    train: tuple[jax.Array, jax.Array] | tuple[()] = (),
    prune: PruneTarget = "features",
) -> tuple[jax.Array, jax.Array]:
    """One head's logits and OoD scores of ``rows``.

    Args:
      params: one head's parameters; mask: (L,) bool chromosome (``head.unit_masks``).
      rows: (R, D) float features to score.
      ood: the score, its temperature and ODIN's perturbation (``OodSpec``). The
        logits returned are always the unperturbed ones.
      train: (x_train (N, D), y_train (N,)) for a fitted score (``ood.fitted``), else ``()``.
      prune: what ``mask`` prunes (``HeadConfig.prune``), static.

    Returns:
      logits (R, C) float32 and scores (R,) float32, higher = more in-distribution.
    """
    score, temperature = ood.score, ood.temperature
    if score in FITTED_SCORES:
        if len(train) != 2:
            raise ValueError(f"head_scores: the {score!r} score needs train=(x_train, y_train)")
        x_train, y_train = train
        hidden = head.last_hidden(params, mask, rows, prune)
        gaussians = mahalanobis.fit(
            head.last_hidden(params, mask, x_train, prune), y_train, params.output_bias.shape[-1]
        )
        return head.output(params, hidden), mahalanobis.mahalanobis_score(gaussians, hidden)
    if score not in LOGIT_SCORES:
        raise ValueError(f"head_scores: unknown OoD score {score!r}; expected one of {', '.join(SCORES)}")
    logit_fn = functools.partial(head.apply, params, mask, prune=prune)
    logits = logit_fn(rows)
    score_logits = logits
    if ood.epsilon > 0:
        score_logits = logit_fn(odin.odin_perturb(logit_fn, rows, ood.epsilon, temperature))
    return logits, LOGIT_SCORES[score](score_logits, temperature)
