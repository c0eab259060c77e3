"""Mahalanobis OoD score on a head's last hidden layer (Lee et al. 2018), without input preprocessing.

Lee, Lee, Lee & Shin, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks", NeurIPS 2018,
arXiv 1807.03888, Eq. (1)-(2): the last hidden activations f(x)
(``head.last_hidden``) of each class are modelled as Gaussians with their own
mean and one shared (tied) covariance, both fitted on the *training* split:

    mu_c  = mean of f(x_i) over the training samples of class c,        (C, H)
    Sigma = (1 / N) sum_i (f(x_i) - mu_{y_i}) (f(x_i) - mu_{y_i})^T,    (H, H)
    score(x) = -min_c (f(x) - mu_c)^T Sigma^+ (f(x) - mu_c),

higher meaning more in-distribution (the squared distance, as in the paper's
Eq. (2) and scikit-learn's ``EmpiricalCovariance.mahalanobis``). Left out: the
input preprocessing (only features are available, as for ODIN) and the
logistic-regression ensemble over layers (the head has one hidden layer).

Numerics. Sigma is singular as a rule here: a ReLU unit that never fires on
the training data gives a zero row and column, a pruned head has many, and
with fewer training samples than hidden units (SRSMAS: 333 images, H = 512)
the rank is at most N - C. An inverse or a Cholesky solve does not exist
then, and a tiny ridge would weight noise directions by 1 / ridge. The
pseudo-inverse does what scikit-learn's ``EmpiricalCovariance`` does
(``scipy.linalg.pinvh``): a symmetric eigendecomposition ``Sigma = Q L Q^T``
(``eigh``, backward stable) and the eigenvalues above ``H * eps * max(L)``
inverted, the rest dropped (NumPy's and SciPy's default cutoff, at float32's
eps: below it an eigenvalue is rounding of the float32 Sigma, and inverting it
would let noise dominate the distance). Distances are then taken as squared
norms of whitened differences, ``||(f(x) - mu_c) W||^2`` with
``W = Q_kept L_kept^(-1/2)``, a sum of non-negative terms (no cancellation, a
distance is never negative). Directions the training data never spans (a unit
dead on it) add nothing to the distance: that is the pseudo-inverse's
definition, and a limit of the score. Every matrix product runs at float32
``HIGHEST`` precision: a GPU's default (TF32) keeps 10 mantissa bits, not
enough for a covariance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class ClassGaussians:
    """The fitted statistics of one head.

    Attributes:
      means: (C, H) float32 class means of the training activations.
      whitening: (H, H) float32 ``W`` with ``W W^T = Sigma^+`` (zero columns
        for the dropped eigenvalues).
      present: (C,) bool, classes with at least one training sample; the
        others are never the nearest class.
    """

    means: jax.Array
    whitening: jax.Array
    present: jax.Array


def tied_covariance(hidden: jax.Array, labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array,
                                                                                      jax.Array]:
    """Class means and the tied covariance of training activations.

    Args:
      hidden: (N, H) float training activations; labels: (N,) int classes in [0, C).
      num_classes: C (static).

    Returns:
      means (C, H) float32 (zero for an absent class), covariance (H, H)
      float32 (the biased 1 / N estimate, as scikit-learn's), present (C,) bool.
    """
    hidden = jnp.asarray(hidden, jnp.float32)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # (N, C)
    counts = jnp.sum(one_hot, axis=0)
    sums = jnp.matmul(one_hot.T, hidden, precision=_HIGHEST)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    centred = hidden - means[labels]
    covariance = jnp.matmul(centred.T, centred, precision=_HIGHEST) / hidden.shape[0]
    return means, covariance, counts > 0


def pseudo_inverse_whitening(covariance: jax.Array) -> jax.Array:
    """``W`` (H, H) with ``W W^T`` the pseudo-inverse of a PSD covariance (module docstring).

    Eigenvalues at or below ``H * eps(float32) * max eigenvalue`` are dropped
    (their columns of ``W`` are zero); a zero covariance gives ``W = 0``.
    """
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)
    size = covariance.shape[-1]
    cutoff = size * jnp.finfo(jnp.float32).eps * jnp.max(eigenvalues)
    kept = eigenvalues > cutoff
    inverse_sqrt = jnp.where(kept, jax.lax.rsqrt(jnp.where(kept, eigenvalues, 1.0)), 0.0)
    return eigenvectors * inverse_sqrt[None, :]


def fit(hidden: jax.Array, labels: jax.Array, num_classes: int) -> ClassGaussians:
    """Fits one head's class Gaussians on its training activations.

    Args:
      hidden: (N, H) float last hidden activations of the training split.
      labels: (N,) int classes in [0, C).
      num_classes: C (static).

    Returns:
      ClassGaussians.
    """
    means, covariance, present = tied_covariance(hidden, labels, num_classes)
    return ClassGaussians(means=means, whitening=pseudo_inverse_whitening(covariance), present=present)


def squared_distances(gaussians: ClassGaussians, hidden: jax.Array) -> jax.Array:
    """Squared Mahalanobis distances to every class mean: (R, H) activations -> (R, C) float32, >= 0.

    Absent classes are at +inf.
    """
    whitened = jnp.matmul(jnp.asarray(hidden, jnp.float32), gaussians.whitening, precision=_HIGHEST)
    whitened_means = jnp.matmul(gaussians.means, gaussians.whitening, precision=_HIGHEST)
    distances = jnp.sum(jnp.square(whitened[:, None, :] - whitened_means[None, :, :]), axis=-1)
    return jnp.where(gaussians.present[None, :], distances, jnp.inf)


def mahalanobis_score(gaussians: ClassGaussians, hidden: jax.Array) -> jax.Array:
    """Lee et al.'s confidence score: minus the smallest squared distance, (R, H) -> (R,) float32.

    Higher means more in-distribution; 0 at a class mean.
    """
    return -jnp.min(squared_distances(gaussians, hidden), axis=-1)
