"""Normal-Gamma mixture latent family (NG-VAE).

Jouffroy, Berthoumieu, Bach, Giremus, "Inducing selective posterior-collapse in variational
autoencoders by modelling the latent space as a mixture of normal-gamma distributions". Every
latent z_i carries its own precision λ_i. The approximate posterior of the pair (z_i, λ_i) is a
two-component mixture with a data-dependent weight p_i,

    q(z_i, λ_i | x) = p_i NG(z_i, λ_i; μ_i, α1, β1) + (1 − p_i) NG(z_i, λ_i; μ_i, α2, β2),
    NG(z, λ; μ, α, β) = Gamma(λ; α, β) · N(z; μ, 1/λ)          (β is a rate),

where μ_i and p_i come from the encoder and (α1, β1), (α2, β2) are hyperparameters: the
*informative* component 1 puts λ at high values (a sharp z), the *uninformative* component 2
keeps λ near 1, like the prior, so a dimension the decoder does not use can collapse onto the
prior on its own (p_i → 0) while the others stay sharp (p_i → 1). The prior factorises,

    p(z_i, λ_i) = N(z_i; 0, 1) · Gamma(λ_i; a0, b0),

and the objective is E_q[log p(x|z)] − Σ_i KL[q(z_i, λ_i|x) || p(z_i) p(λ_i)] (the decoder reads
z only; λ is an auxiliary variable of the posterior).

TensorFlow Probability has no Normal-Gamma distribution and registers no KL for mixtures
(../shared/reference/stack-notes.md §3): :class:`NormalGamma`, :class:`NormalGammaMixture`, and
the closed-form KL below are written here on top of ``tfd.Gamma``, ``tfd.Normal``,
``tfd.StudentT`` and ``tfd.MixtureSameFamily``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from vae_tf.errors import ConfigError
from vae_tf.latents.base import LatentFamily
from vae_tf.latents.gaussian import stateless_normal_rows
from vae_tf.lazy_tfp import tfd

#: Smallest precision a sample may take: z = μ + ε/√λ stays finite (with α > 1 a Gamma draw this
#: small has probability ~ (β · 1e-12)^α, so the guard never changes a number in practice).
MIN_PRECISION = 1e-12

KL_ESTIMATORS = ("bound", "monte_carlo")
#: Draws per example of the Monte-Carlo KL the diagnostics read (``kl_per_dim_diagnostic``).
DIAGNOSTIC_KL_DRAWS = 256


def kl_gamma(concentration, rate, prior_concentration, prior_rate) -> tf.Tensor:
    """KL(Gamma(α, β) || Gamma(a0, b0)), shape-and-rate parameterisation, nats:

        (α − a0) ψ(α) − ln Γ(α) + ln Γ(a0) + a0 (ln β − ln b0) + α (b0 − β) / β

    (TFP's registered Gamma–Gamma KL, written out so the Normal-Gamma KL below is one formula.)
    """
    a, b, a0, b0 = (tf.cast(v, tf.float32) for v in (concentration, rate, prior_concentration, prior_rate))
    return ((a - a0) * tf.math.digamma(a) - tf.math.lgamma(a) + tf.math.lgamma(a0)
            + a0 * (tf.math.log(b) - tf.math.log(b0)) + a * (b0 - b) / b)


def kl_normal_gamma(loc, concentration, rate, prior_concentration, prior_rate) -> tf.Tensor:
    """Closed-form KL[NG(μ, α, β) || N(0, 1) · Gamma(a0, b0)] (nats), for α > 1.

    Derivation. With q(z, λ) = Gamma(λ; α, β) N(z; μ, 1/λ) and p(z, λ) = N(z; 0, 1) Gamma(λ; a0, b0),
    the chain rule of the KL splits the pair into the precision and z given the precision:

        KL = E_q[log Gamma(λ; α, β) − log Gamma(λ; a0, b0)] + E_{q(λ)} E_{q(z|λ)}[log N(z; μ, 1/λ) − log N(z; 0, 1)]
           = KL(Gamma(α, β) || Gamma(a0, b0)) + E_{q(λ)}[ KL(N(μ, 1/λ) || N(0, 1)) ].

    The Gaussian KL is ½ (μ² + 1/λ − 1 + ln λ) (variance 1/λ against 1); under λ ~ Gamma(α, β)
    E[1/λ] = β / (α − 1) (the inverse-Gamma mean, finite for α > 1) and E[ln λ] = ψ(α) − ln β, so

        KL = KL(Gamma(α, β) || Gamma(a0, b0)) + ½ (μ² + β / (α − 1) + ψ(α) − ln β − 1).

    The first term is :func:`kl_gamma`. Tested against a Monte-Carlo estimate with SciPy densities.
    """
    loc, concentration, rate = (tf.cast(v, tf.float32) for v in (loc, concentration, rate))
    expected_kl_z = 0.5 * (tf.square(loc) + rate / (concentration - 1.0) + tf.math.digamma(concentration)
                           - tf.math.log(rate) - 1.0)
    return kl_gamma(concentration, rate, prior_concentration, prior_rate) + expected_kl_z


def _split_seed(seed, n: int):
    """``n`` independent stateless seeds from one (int32 ``[2]``), or ``n`` Nones."""
    if seed is None:
        return [None] * n
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), n)
    return [seeds[i] for i in range(n)]


def _draw(loc, precision_distribution, sample_shape, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """λ ~ ``precision_distribution`` (reparameterised), then z = μ + ε/√λ; returns ``(z, λ)``."""
    seed_precision, seed_noise = _split_seed(seed, 2)
    precision = tf.maximum(precision_distribution.sample(sample_shape, seed=seed_precision), MIN_PRECISION)
    shape = tf.shape(precision)
    eps = tf.random.normal(shape) if seed_noise is None else tf.random.stateless_normal(shape, seed=seed_noise)
    return loc + eps * tf.math.rsqrt(precision), precision


class NormalGamma:
    """The Normal-Gamma distribution of a pair (z, λ): λ ~ Gamma(α, β) (β a rate), z | λ ~ N(μ, 1/λ).

    Parameters broadcast against each other (batch shape = their broadcast shape). Moments:
    E[λ] = α/β, E[z] = μ, Var[z] = β / (α − 1) (α > 1). The marginal of z is a Student-t with
    2α degrees of freedom, location μ and scale √(β/α).

    ``sample`` is reparameterised in every parameter: TFP's Gamma has implicit reparameterisation
    gradients (Figurnov et al. 2018) for λ, and z = μ + ε / √λ with ε ~ N(0, 1).

    **Why not a** ``tfd.Distribution``: its event is a *pair* (z, λ) whose parts depend on each
    other. TFP expresses that as a ``JointDistributionNamed`` (stack-notes.md §3), but a joint
    cannot be a component of ``MixtureSameFamily`` (which needs one array-valued event), and TFP
    registers no KL for a joint with dependent parts nor for a mixture, so the posterior below
    would need the same hand-written sampler and KL in any case. Everything outside this module
    that needs a distribution gets a real TFP one: the marginal of z (:meth:`marginal`, a
    ``StudentT``; for the mixture a ``MixtureSameFamily`` of them, which is what
    :meth:`NormalGammaLatent.posterior` returns) and λ's marginal (a ``Gamma`` / a
    ``MixtureSameFamily`` of Gammas). Callers never test for this class: they go through the
    :class:`~vae_tf.latents.base.LatentFamily` interface (``posterior``, ``kl_per_dim``,
    ``sample``, ``continuous_posterior``).
    """

    def __init__(self, loc, concentration, rate):
        loc, concentration, rate = (tf.convert_to_tensor(v, tf.float32) for v in (loc, concentration, rate))
        shape = tf.broadcast_dynamic_shape(tf.shape(loc), tf.broadcast_dynamic_shape(tf.shape(concentration),
                                                                                     tf.shape(rate)))
        self.loc = tf.broadcast_to(loc, shape)
        self.concentration = tf.broadcast_to(concentration, shape)
        self.rate = tf.broadcast_to(rate, shape)

    @property
    def precision(self) -> tfd.Gamma:
        """The marginal of λ, Gamma(α, β)."""
        return tfd.Gamma(concentration=self.concentration, rate=self.rate)

    def conditional(self, precision) -> tfd.Normal:
        """z | λ = N(μ, 1/λ)."""
        return tfd.Normal(loc=self.loc, scale=tf.math.rsqrt(precision))

    def log_prob(self, z, precision) -> tf.Tensor:
        """log Gamma(λ; α, β) + log N(z; μ, 1/λ)."""
        z, precision = tf.cast(z, tf.float32), tf.cast(precision, tf.float32)
        return self.precision.log_prob(precision) + self.conditional(precision).log_prob(z)

    def sample(self, sample_shape=(), seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Reparameterised ``(z, λ)``; ``seed``: int32 ``[2]`` for stateless draws, or None."""
        return _draw(self.loc, self.precision, sample_shape, seed)

    def marginal(self) -> tfd.StudentT:
        """The marginal of z: Student-t(2α, μ, √(β/α))."""
        return tfd.StudentT(df=2.0 * self.concentration, loc=self.loc,
                            scale=tf.sqrt(self.rate / self.concentration))

    def mean(self) -> tf.Tensor:
        """E[z] = μ."""
        return self.loc

    def variance(self) -> tf.Tensor:
        """Var[z] = E[1/λ] = β / (α − 1) (α > 1)."""
        return self.rate / (self.concentration - 1.0)

    def precision_mean(self) -> tf.Tensor:
        """E[λ] = α / β."""
        return self.concentration / self.rate

    def kl_to_standard(self, prior_concentration, prior_rate) -> tf.Tensor:
        """KL[NG(μ, α, β) || N(0, 1) Gamma(a0, b0)], closed form (:func:`kl_normal_gamma`)."""
        return kl_normal_gamma(self.loc, self.concentration, self.rate, prior_concentration, prior_rate)


class NormalGammaMixture:
    """q(z, λ) = p NG(μ, α1, β1) + (1 − p) NG(μ, α2, β2): two Normal-Gamma components sharing μ.

    Args:
        loc: μ, any batch shape.
        logits: logit of the weight p of component 1 (p = sigmoid(logits)), same shape as ``loc``.
        concentrations, rates: ``(α1, α2)`` and ``(β1, β2)``, scalars or tensors broadcasting
            against ``loc``.

    **Sampling and the component choice.** The choice of component is discrete and cannot be
    reparameterised by a change of variables, but λ's marginal, the one-dimensional mixture
    p Gamma(α1, β1) + (1 − p) Gamma(α2, β2), can: ``sample`` draws λ from it with *implicit
    reparameterisation* through the mixture's CDF (Figurnov, Mohamed, Mnih 2018; TFP's
    ``MixtureSameFamily(..., reparameterize=True)``), ∂λ/∂θ = −(∂F(λ; θ)/∂θ) / q(λ; θ), then
    z = μ + ε / √λ. This is exact (no relaxation, no bias) and gradients reach p, μ and every
    α, β. It is neither of the two textbook options (a relaxed choice, or the expectation over
    the components taken exactly): it is the expectation taken exactly *by the sampler*, which
    needs one decoder pass instead of one per component.

    **KL.** :meth:`kl_bound` takes the expectation over the component exactly: the weighted sum
    of the per-component closed forms, Σ_k π_k KL[NG_k || prior] — an upper bound of the mixture
    KL by convexity (the gap is the mutual information between the component and (z, λ), at most
    the entropy H(p) ≤ ln 2). :meth:`kl_monte_carlo` is the unbiased estimator
    log q(z, λ) − log p(z) − log p(λ) at reparameterised draws.
    """

    def __init__(self, loc, logits, concentrations, rates):
        self.loc = tf.convert_to_tensor(loc, tf.float32)
        self.logits = tf.convert_to_tensor(logits, tf.float32)
        a1, a2 = (tf.convert_to_tensor(a, tf.float32) for a in concentrations)
        b1, b2 = (tf.convert_to_tensor(b, tf.float32) for b in rates)
        self.components = (NormalGamma(self.loc, a1, b1), NormalGamma(self.loc, a2, b2))
        self.loc = self.components[0].loc  # broadcast to the batch shape

    @property
    def weight(self) -> tf.Tensor:
        """p, the weight of component 1 (the informative one)."""
        return tf.sigmoid(self.logits)

    def _log_weights(self) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.math.log_sigmoid(self.logits), tf.math.log_sigmoid(-self.logits)

    def _mixture_logits(self) -> tf.Tensor:
        """Categorical logits ``[..., 2]`` whose softmax is (p, 1 − p)."""
        return tf.stack([self.logits, tf.zeros_like(self.logits)], axis=-1)

    def _stacked(self, value_fn) -> tf.Tensor:
        return tf.stack([value_fn(c) for c in self.components], axis=-1)

    @property
    def precision(self) -> tfd.MixtureSameFamily:
        """The marginal of λ, p Gamma(α1, β1) + (1 − p) Gamma(α2, β2), implicitly reparameterised."""
        gammas = tfd.Gamma(concentration=self._stacked(lambda c: c.concentration),
                           rate=self._stacked(lambda c: c.rate))
        return tfd.MixtureSameFamily(tfd.Categorical(logits=self._mixture_logits()), gammas,
                                     reparameterize=True)

    def marginal(self) -> tfd.MixtureSameFamily:
        """The marginal of z: p t_{2α1}(μ, √(β1/α1)) + (1 − p) t_{2α2}(μ, √(β2/α2)) (Student-t)."""
        students = tfd.StudentT(df=self._stacked(lambda c: 2.0 * c.concentration),
                                loc=self._stacked(lambda c: c.loc),
                                scale=self._stacked(lambda c: tf.sqrt(c.rate / c.concentration)))
        return tfd.MixtureSameFamily(tfd.Categorical(logits=self._mixture_logits()), students)

    def log_prob(self, z, precision) -> tf.Tensor:
        """log q(z, λ) = logsumexp(log p + log NG1(z, λ), log(1 − p) + log NG2(z, λ))."""
        z, precision = tf.cast(z, tf.float32), tf.cast(precision, tf.float32)
        log_p1, log_p2 = self._log_weights()
        return tf.reduce_logsumexp(tf.stack([log_p1 + self.components[0].log_prob(z, precision),
                                             log_p2 + self.components[1].log_prob(z, precision)], axis=0), axis=0)

    def sample(self, sample_shape=(), seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Reparameterised ``(z, λ)`` (see the class docstring); ``seed``: int32 ``[2]`` or None."""
        return _draw(self.loc, self.precision, sample_shape, seed)

    def mean(self) -> tf.Tensor:
        """E[z] = μ (both components share it)."""
        return self.loc

    def variance(self) -> tf.Tensor:
        """Var[z] = p β1/(α1 − 1) + (1 − p) β2/(α2 − 1) (same mean, so no between-component term)."""
        p = self.weight
        return p * self.components[0].variance() + (1.0 - p) * self.components[1].variance()

    def precision_mean(self) -> tf.Tensor:
        """E[λ] = p α1/β1 + (1 − p) α2/β2."""
        p = self.weight
        return p * self.components[0].precision_mean() + (1.0 - p) * self.components[1].precision_mean()

    def kl_bound(self, prior_concentration, prior_rate) -> tf.Tensor:
        """Σ_k π_k KL[NG_k || N(0, 1) Gamma(a0, b0)] ≥ KL[q || p] (convexity), closed form, nats."""
        p = self.weight
        return (p * self.components[0].kl_to_standard(prior_concentration, prior_rate)
                + (1.0 - p) * self.components[1].kl_to_standard(prior_concentration, prior_rate))

    def kl_monte_carlo(self, prior_concentration, prior_rate, num_samples: int = 1, seed=None) -> tf.Tensor:
        """Unbiased Monte-Carlo KL[q || N(0, 1) Gamma(a0, b0)]: the mean over ``num_samples``
        reparameterised draws of log q(z, λ) − log N(z; 0, 1) − log Gamma(λ; a0, b0)."""
        z, precision = self.sample([num_samples], seed=seed)
        prior_precision = tfd.Gamma(concentration=tf.cast(prior_concentration, tf.float32),
                                    rate=tf.cast(prior_rate, tf.float32))
        log_ratio = (self.log_prob(z, precision) - tfd.Normal(0.0, 1.0).log_prob(z)
                     - prior_precision.log_prob(precision))
        return tf.reduce_mean(log_ratio, axis=0)

    def entropy_of_choice(self) -> tf.Tensor:
        """H(p) (nats): the largest possible gap between :meth:`kl_bound` and the mixture KL."""
        log_p1, log_p2 = self._log_weights()
        p = self.weight
        return -(p * log_p1 + (1.0 - p) * log_p2)


def _hyper(value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"model.latent.{what} must be a finite number > 0, got {value!r}")
    return float(value)


class NormalGammaLatent(LatentFamily):
    """NG-VAE latent family (Jouffroy et al.; module docstring): per dimension, the posterior of
    (z_i, λ_i) is p_i NG(μ_i, α1, β1) + (1 − p_i) NG(μ_i, α2, β2), the prior N(0, 1) Gamma(a0, b0).

    The encoder emits ``[μ, logit p]`` (``2 d`` numbers). The decoder reads z (``d`` numbers).

    - ``sample``: λ from the λ-mixture with implicit reparameterisation through its CDF, then
      z = μ + ε / √λ (:class:`NormalGammaMixture`): exact, gradients reach μ and p.
    - ``kl_per_dim`` ``[B, d]``: the KL of the pair (z_i, λ_i) of every dimension.
      ``kl_estimator="bound"`` (default): the convexity bound p KL1 + (1 − p) KL2 with the
      closed-form Normal-Gamma KL (:func:`kl_normal_gamma`), the exact expectation over the
      component choice; deterministic, at most H(p_i) ≤ ln 2 above the mixture KL, so the
      objective stays a lower bound of the ELBO. ``"monte_carlo"``: one fresh reparameterised
      draw of (z, λ) per example, log q(z, λ) − log p(z) − log p(λ), unbiased but noisy; the draw
      comes from the model's seeded random stream (``kl_per_dim``'s ``seed``) and is
      independent of the decoder's z.
    - ``posterior`` is the marginal of z (a mixture of two Student-t), ``prior`` N(0, 1): what
      importance-weighted NLL needs (the decoder never sees λ).
    - ``embedding`` and ``z_mean``: μ (the mean of z). ``encode`` adds ``precision_mean`` E[λ_i]
      and ``informative_weight`` p_i, both ``[B, d]``.
    - Diagnostics (every step; means over the examples of the epoch, train and ``val_``):
      ``informative_weight_<i>`` (p_i), ``precision_mean_<i>`` (E[λ_i]) and ``informative_dims``
      (the number of dims whose data-averaged p_i exceeds ½).

    Hyperparameters (``model.latent`` options; β's are rates):

    - ``alpha1``, ``beta1`` (default 9, 2): the informative component, E[λ] = 4.5, Var[z|x] =
      β1/(α1 − 1) = 0.25 (posterior std of z 0.5);
    - ``alpha2``, ``beta2`` (default 2.5, 2.5): the uninformative component, E[λ] = 1 like the prior,
      Var[z|x] = 5/3;
    - ``prior_alpha``, ``prior_beta`` (default 1, 1): the Gamma(a0, b0) prior of λ (mean 1, broad,
      so an informative dimension costs a few nats rather than hundreds);
    - ``kl_estimator``: ``"bound"`` or ``"monte_carlo"`` (above).

    No log-variance clamp is needed here (unlike the Gaussian families' ``log_var_clip``): the
    encoder emits no scale. The variances come from the fixed (α, β) hyperparameters and p is a
    sigmoid, so no encoder output makes the KL bound infinite; only μ enters it, as μ²/2, as in
    every Gaussian KL.

    With the defaults, at μ = 0 an informative dimension costs KL1 ≈ 3.06 nats and a collapsed one
    KL2 ≈ 0.41 nats: because the prior of z does not depend on λ, no component with a finite
    E[1/λ] matches the prior exactly, so a collapsed dimension keeps this floor (it counts in
    ``active_kl_dims``; read ``informative_dims`` / the p split instead). α1, α2 must exceed 1
    (E[1/λ] and the KL are infinite otherwise) and the informative component must have the larger
    E[λ].

    **Train with KL warm-up** (``objective.kl_weight: {kind: linear, steps: ...}``): from the
    first step the KL pulls every p_i down by KL1 − KL2 nats while an untrained decoder gives no
    reason to keep a sharp z, so without warm-up all p_i reach 0 in the first epoch and stay
    there (every dimension then codes through μ with unit-scale noise). docs/latent_families.md
    has the measurements.
    """

    family = "normal_gamma"

    def __init__(self, latent_dim: int, alpha1: float = 9.0, beta1: float = 2.0, alpha2: float = 2.5,
                 beta2: float = 2.5, prior_alpha: float = 1.0, prior_beta: float = 1.0,
                 kl_estimator: str = "bound", **kwargs):
        super().__init__(latent_dim, **kwargs)
        self.alpha1, self.beta1 = _hyper(alpha1, "alpha1"), _hyper(beta1, "beta1")
        self.alpha2, self.beta2 = _hyper(alpha2, "alpha2"), _hyper(beta2, "beta2")
        self.prior_alpha, self.prior_beta = _hyper(prior_alpha, "prior_alpha"), _hyper(prior_beta, "prior_beta")
        for name, alpha in (("alpha1", self.alpha1), ("alpha2", self.alpha2)):
            if alpha <= 1.0:
                raise ConfigError(f"model.latent.{name} must be > 1 (E[1/λ] and the KL are infinite otherwise), got {alpha!r}")
        if self.alpha1 / self.beta1 <= self.alpha2 / self.beta2:
            raise ConfigError(
                f"model.latent: the informative component must have the larger precision mean alpha1/beta1 "
                f"({self.alpha1 / self.beta1:g}) than alpha2/beta2 ({self.alpha2 / self.beta2:g}); swap the components")
        if kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"model.latent.kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {kl_estimator!r}")
        self.kl_estimator = kl_estimator
        # Data-averaged per-dimension diagnostics, one scalar tracker each so that every value is
        # a plain scalar in the logs (and in MLflow); the VAE resets them with its own trackers.
        self.weight_trackers = [keras.metrics.Mean(name=f"informative_weight_{i}") for i in range(self.latent_dim)]
        self.precision_trackers = [keras.metrics.Mean(name=f"precision_mean_{i}") for i in range(self.latent_dim)]

    @property
    def param_size(self) -> int:
        return 2 * self.latent_dim

    def split(self, params: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(μ, logit p)``, each ``[B, d]``."""
        loc, logits = tf.split(params, 2, axis=-1)
        return loc, logits

    def mixture(self, params: tf.Tensor) -> NormalGammaMixture:
        """q(z, λ | x), batch shape ``[B, d]``."""
        loc, logits = self.split(params)
        return NormalGammaMixture(loc, logits, (self.alpha1, self.alpha2), (self.beta1, self.beta2))

    def posterior(self, params):
        """The marginal q(z|x) of z (λ integrated out): a mixture of two Student-t per dim."""
        return self.mixture(params).marginal()

    def prior(self):
        """p(z) = N(0, I); λ's prior is :meth:`precision_prior`, independent of z."""
        return tfd.Normal(loc=tf.zeros([self.latent_dim]), scale=tf.ones([self.latent_dim]))

    def precision_prior(self) -> tfd.Gamma:
        """p(λ) = Gamma(a0, b0) per dimension."""
        return tfd.Gamma(concentration=tf.fill([self.latent_dim], self.prior_alpha),
                         rate=tf.fill([self.latent_dim], self.prior_beta))

    def kl_per_dim(self, params, z=None, seed=None):
        """KL[q(z_i, λ_i|x) || N(0, 1) Gamma(a0, b0)] per dimension, ``[B, d]`` nats: the
        convexity bound (closed form) or a single-draw Monte-Carlo estimate, per ``kl_estimator``
        (class docstring). ``z`` is unused (the estimate needs λ too); the Monte-Carlo draw
        comes from ``seed`` (the model passes one from its own checkpointed stream, so a run is
        reproducible and resumes exactly; without a seed, TensorFlow's global stream)."""
        mixture = self.mixture(params)
        if self.kl_estimator == "bound":
            return mixture.kl_bound(self.prior_alpha, self.prior_beta)
        return mixture.kl_monte_carlo(self.prior_alpha, self.prior_beta, num_samples=1, seed=seed)

    def kl_per_dim_diagnostic(self, params, z=None, seed=None):
        """With ``kl_estimator="monte_carlo"``, the mean of :data:`DIAGNOSTIC_KL_DRAWS` draws per
        example (one draw's standard deviation is ~1.5 nats per dimension, so single draws were
        negative for many examples and the (ε, δ)-collapse check refused them), clipped at 0;
        with the bound, the bound (exact in its own terms)."""
        if self.kl_estimator == "bound":
            return self.kl_per_dim(params)
        kl = self.mixture(params).kl_monte_carlo(self.prior_alpha, self.prior_beta,
                                                 num_samples=DIAGNOSTIC_KL_DRAWS, seed=seed)
        return tf.maximum(kl, 0.0)

    def sample_with_precision(self, params, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Reparameterised ``(z, λ)``, each ``[B, d]``."""
        return self.mixture(params).sample(seed=seed)

    def sample(self, params, seed=None):
        """Reparameterised z ``[B, d]`` (λ drawn and integrated by the sampler, class docstring)."""
        return self.sample_with_precision(params, seed=seed)[0]

    def embedding(self, params):
        return self.split(params)[0]

    def export_outputs(self, params):
        mixture = self.mixture(params)
        return {"embedding": mixture.loc, "z_mean": mixture.loc, "precision_mean": mixture.precision_mean(),
                "informative_weight": mixture.weight}

    def sample_prior(self, seeds):
        return stateless_normal_rows(seeds, self.latent_dim)

    # --- VAE hooks -----------------------------------------------------------------------------
    def update_diagnostics(self, terms: dict) -> dict:
        mixture = self.mixture(terms["params"])
        weight, precision = mixture.weight, mixture.precision_mean()
        for i in range(self.latent_dim):
            self.weight_trackers[i].update_state(weight[:, i])
            self.precision_trackers[i].update_state(precision[:, i])
        mean_weight = tf.stack([t.result() for t in self.weight_trackers])
        return {"informative_dims": tf.reduce_sum(tf.cast(mean_weight > 0.5, tf.float32))}

    def evaluation_diagnostics(self, post, kl):
        """The p split (the class docstring's collapse floor: a KL above 0.41 nats does not say a
        dim is used): ``informative_dims`` (dims whose mean p_i > ½), ``informative_weight_<i>``
        and ``precision_mean_<i>``, means over the examples, as training logs them."""
        import numpy as np

        weight, precision = np.mean(post["informative_weight"], axis=0), np.mean(post["precision_mean"], axis=0)
        out = {"informative_dims": float(np.sum(weight > 0.5))}
        out.update({f"informative_weight_{i}": float(w) for i, w in enumerate(weight)})
        out.update({f"precision_mean_{i}": float(v) for i, v in enumerate(precision)})
        return out

    def per_dim_diagnostics(self) -> dict:
        """``{"informative_weight": (d,), "precision_mean": (d,)}`` NumPy arrays: the values of the
        last epoch (or evaluation) averaged over its examples."""
        import numpy as np

        return {"informative_weight": np.array([float(t.result()) for t in self.weight_trackers]),
                "precision_mean": np.array([float(t.result()) for t in self.precision_trackers])}

    def layout(self) -> dict:
        return {**super().layout(), "hyperparameters": self.hyperparameters(), "kl_estimator": self.kl_estimator,
                "kl_columns": "one per latent dimension: the KL of the pair (z_i, λ_i)"}

    def hyperparameters(self) -> dict:
        return {"alpha1": self.alpha1, "beta1": self.beta1, "alpha2": self.alpha2, "beta2": self.beta2,
                "prior_alpha": self.prior_alpha, "prior_beta": self.prior_beta}

    def get_config(self):
        return {**super().get_config(), **self.hyperparameters(), "kl_estimator": self.kl_estimator}


__all__ = ["KL_ESTIMATORS", "NormalGamma", "NormalGammaLatent", "NormalGammaMixture", "kl_gamma", "kl_normal_gamma"]
