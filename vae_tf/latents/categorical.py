"""Joint Gaussian + Gumbel-softmax categorical latent family.

Serdega, "Variational Mutual Information Maximization Framework for VAE Latent Codes with
Continuous and Discrete Priors" (§4.3.2); the relaxation is the Gumbel-softmax / Concrete
distribution (Jang, Gu, Poole 2017; Maddison, Mnih, Teh 2017). The code is z = (z_gauss, c):

    q(z_gauss, c | x) = N(z_gauss; μ(x), diag σ²(x)) · Cat(c; π(x)),
    p(z_gauss, c)     = N(z_gauss; 0, I) · Uniform{1..K},

so the KL splits into a Gaussian part and a categorical part. During training c is the relaxed
one-hot ``RelaxedOneHotCategorical(τ, logits)`` sample (reparameterised), with the temperature τ
on a schedule of the training step; everywhere else (decoding a category, importance-weighted
NLL, prior samples) c is an exact one-hot.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from vae_tf._traced import traced  # one tf.function per model, counted as its own
from vae_tf.errors import ConfigError
from vae_tf.latents.base import LatentFamily
from vae_tf.latents.gaussian import checked_log_var_clip, stateless_normal_rows
from vae_tf.lazy_tfp import tfd
from vae_tf.schedules import (ConstantSchedule, CyclicalSchedule, ExponentialDecaySchedule, LinearSchedule,
                              Schedule, build_schedule)

#: Lowest temperature the sampler uses whatever a schedule says: below it the relaxed sample is a
#: one-hot up to float32 rounding and its gradients vanish or overflow.
MIN_TEMPERATURE = 1e-3


def _positive_temperature(schedule: Schedule) -> None:
    """Refuse schedules whose values can reach 0 (one line, naming the option)."""
    lows = {
        ConstantSchedule: lambda s: s.constant,
        ExponentialDecaySchedule: lambda s: s.floor if s.rate > 0 else s.start,
        LinearSchedule: lambda s: min(s.start, s.stop),
        CyclicalSchedule: lambda s: min(s.start, s.stop),
    }
    low = lows.get(type(schedule), lambda s: 1.0)(schedule)
    if low > 0:
        return
    if isinstance(schedule, ConstantSchedule):
        raise ConfigError(f"model.latent.temperature must be > 0, got {low:g}; give e.g. 0.5, or an annealed "
                          "{kind: exponential_decay, start: 1.0, rate: 1e-4, floor: 0.5}")
    raise ConfigError(f"model.latent.temperature must stay > 0 (got a schedule reaching {low:g}); give a schedule "
                      "whose values stay > 0, e.g. {kind: exponential_decay, start: 1.0, rate: 1e-4, floor: 0.5}")


class GaussianCategoricalLatent(LatentFamily):
    """z = (z_gauss, c): a diagonal Gaussian of ``latent_dim`` dims and a K-way categorical c
    (Serdega §4.3.2; module docstring).

    **Layout.** The encoder emits ``[μ (g), log σ² (g), logits (K)]`` (``param_size = 2g + K``,
    g = ``latent_dim``). The decoder reads ``z = concat(z_gauss, c)`` (``code_size = g + K``), c a
    one-hot (or, in training, its relaxation). ``kl_per_dim`` has ``g + 1`` columns: the g
    Gaussian dimensions, then the categorical part as one column (column ``g``; the training
    app's ``val_kl_dim_<g>``).

    **KL** = Gaussian part + categorical part, both analytic:
    ½ (μ² + σ² − log σ² − 1) per Gaussian dim, and KL(Cat(π) || Uniform(K)) = Σ_k π_k log π_k + log K.
    The categorical term is the KL of the *underlying* categoricals, the usual surrogate: the
    relaxed sample the decoder sees in training is not a draw from Cat(π), and TFP registers no
    KL for relaxed categoricals (stack-notes.md §3). It is exact for the discrete model used at
    evaluation and in serving (one-hot c).

    **Sample** (training): z_gauss = μ + σ ε and c ~ RelaxedOneHotCategorical(τ, logits), both
    reparameterised; τ = ``temperature`` schedule at the model's ``train_steps`` (checkpointed,
    so a restored run continues the schedule), never below 1e-3. The value in force is logged as
    ``temperature``.

    **Log-variance clamp** (``log_var_clip``, default 20): the Gaussian part's raw log σ² is
    clipped to ``[-clip, clip]`` before it is exponentiated, exactly as in
    :class:`~vae_tf.latents.gaussian.GaussianLatent` (whose docstring justifies the default): the
    identity inside the range, a finite KL for any encoder output.

    **Temperature** (``temperature`` option): a number (constant) or a schedule spec, e.g.
    ``{kind: exponential_decay, start: 1.0, rate: 1e-4, floor: 0.5}`` (τ_t = max(floor,
    start·e^(−rate·t)), Jang et al. 2017); any :mod:`vae_tf.schedules` kind whose values stay > 0.

    **Embedding** (downstream): ``concat(μ, π)`` (``g + K`` numbers: the Gaussian mean and the
    category probabilities). ``encode`` returns ``embedding``, ``z_mean`` (μ), ``z_log_var``
    (log σ²), ``category_probs`` π ``[B, K]`` and ``category`` (argmax, int32 ``[B]``).

    **Decoding a category.** ``decode(z)`` takes ``z = concat(z_gauss, one_hot(k))``; the extra
    signature ``decode_category(z_gauss: float32[B, g], category: int32[B])`` builds that z
    ("category k, style z_gauss"). ``sample`` draws z_gauss ~ N(0, I) and a uniform category per
    seed row.

    **Diagnostics** (every step, means over the examples of the epoch, train and ``val_``):
    ``kl_gaussian`` and ``kl_categorical`` (the two parts of ``kl``), ``category_usage_<k>`` (the
    average category distribution E_x π_k(x)), ``category_entropy`` (its entropy in nats; log K
    when all categories are used equally, 0 when one takes everything), ``temperature``.
    """

    family = "gaussian_categorical"

    def __init__(self, latent_dim: int, categories: int = 10, temperature=1.0, log_var_clip: float = 20.0,
                 **kwargs):
        super().__init__(latent_dim, **kwargs)
        if not isinstance(categories, int) or isinstance(categories, bool) or categories < 2:
            raise ConfigError(f"model.latent.categories must be an integer >= 2, got {categories!r}")
        self.categories = categories
        self.temperature_schedule = build_schedule(temperature, "model.latent.temperature")
        _positive_temperature(self.temperature_schedule)
        self.log_var_clip = checked_log_var_clip(log_var_clip)
        self._step = None  # a function returning VAE.train_steps once bound (not tracked twice)
        self.kl_gaussian_tracker = keras.metrics.Mean(name="kl_gaussian")
        self.kl_categorical_tracker = keras.metrics.Mean(name="kl_categorical")
        self.usage_trackers = [keras.metrics.Mean(name=f"category_usage_{k}") for k in range(categories)]

    # --- sizes -----------------------------------------------------------------------------
    @property
    def param_size(self) -> int:
        return 2 * self.latent_dim + self.categories

    @property
    def code_size(self) -> int:
        return self.latent_dim + self.categories

    @property
    def embedding_size(self) -> int:
        return self.latent_dim + self.categories

    @property
    def kl_size(self) -> int:
        return self.latent_dim + 1

    # --- parameters --------------------------------------------------------------------------
    def split(self, params: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(μ [B, g], log σ² [B, g], logits [B, K])``."""
        g = self.latent_dim
        mean, log_var, logits = tf.split(params, [g, g, self.categories], axis=-1)
        return mean, tf.clip_by_value(log_var, -self.log_var_clip, self.log_var_clip), logits

    def bind_step(self, step) -> None:
        # A closure, not an attribute holding the variable: Keras would track it as a weight of
        # this layer too, and position-keyed checkpoints would list it twice.
        self._step = lambda: step

    def temperature(self, step=None) -> tf.Tensor:
        """τ at ``step`` (default: the bound model's ``train_steps``; 0 when unbound)."""
        if step is None:
            step = self._step() if self._step is not None else 0
        return tf.maximum(tf.cast(self.temperature_schedule(step), tf.float32), MIN_TEMPERATURE)

    # --- distributions -------------------------------------------------------------------------
    def posterior(self, params, temperature=None):
        """q(z_gauss, c | x) as it is sampled in training: ``{"z_gauss": Independent Normal
        (event g), "c": RelaxedOneHotCategorical(τ, logits) (event K)}``, batch ``[B]``."""
        mean, log_var, logits = self.split(params)
        tau = self.temperature() if temperature is None else temperature
        return tfd.JointDistributionNamed({
            "z_gauss": tfd.Independent(tfd.Normal(mean, tf.exp(0.5 * log_var)), reinterpreted_batch_ndims=1),
            "c": tfd.RelaxedOneHotCategorical(tau, logits=logits),
        })

    def prior(self):
        """p(z_gauss, c) = N(0, I_g) × Uniform(K), ``{"z_gauss", "c"}`` (c an exact one-hot)."""
        return tfd.JointDistributionNamed({
            "z_gauss": tfd.Independent(tfd.Normal(tf.zeros([self.latent_dim]), tf.ones([self.latent_dim])),
                                       reinterpreted_batch_ndims=1),
            "c": tfd.OneHotCategorical(logits=tf.zeros([self.categories]), dtype=tf.float32),
        })

    def kl_parts(self, params) -> tuple[tf.Tensor, tf.Tensor]:
        """``(KL per Gaussian dim [B, g], KL(Cat(π) || Uniform(K)) [B])``, analytic, nats."""
        mean, log_var, logits = self.split(params)
        kl_gauss = 0.5 * (tf.square(mean) + tf.exp(log_var) - log_var - 1.0)
        log_probs = tf.nn.log_softmax(logits, axis=-1)
        kl_cat = tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1) + math.log(self.categories)
        return kl_gauss, kl_cat

    def kl_per_dim(self, params, z=None, seed=None):
        """``[B, g + 1]``: the analytic Gaussian KL per dim, then the categorical surrogate
        KL(Cat(π) || Uniform(K)) as the last column (class docstring); ``z`` is unused."""
        kl_gauss, kl_cat = self.kl_parts(params)
        return tf.concat([kl_gauss, kl_cat[:, None]], axis=-1)

    def continuous_posterior(self, params):
        """q(z_gauss | x): the Gaussian part, batch shape ``[B, latent_dim]``."""
        mean, log_var, _ = self.split(params)
        return tfd.Normal(mean, tf.exp(0.5 * log_var))

    def category_logits(self, params):
        return self.split(params)[2]

    def hard_code(self, params, seed):
        """z = (z_gauss ~ N(μ, σ²), exact one-hot c ~ Cat(π)): the discrete model (evaluation, serving)."""
        mean, log_var, logits = self.split(params)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
        z_gauss = mean + tf.exp(0.5 * log_var) * tf.random.stateless_normal(tf.shape(mean), seed=seeds[0])
        category = tf.random.stateless_categorical(logits, 1, seed=seeds[1], dtype=tf.int32)[:, 0]
        return tf.concat([z_gauss, tf.one_hot(category, self.categories, dtype=tf.float32)], axis=-1)

    def sample(self, params, seed=None, temperature=None):
        """Reparameterised z = concat(μ + σ ε, c̃), c̃ ~ RelaxedOneHotCategorical(τ, logits)
        (τ from the schedule unless given); stateless when ``seed`` (int32 ``[2]``) is given."""
        mean, log_var, logits = self.split(params)
        tau = self.temperature() if temperature is None else tf.convert_to_tensor(temperature, tf.float32)
        if seed is None:
            eps = tf.random.normal(tf.shape(mean))
            relaxed = tfd.RelaxedOneHotCategorical(tau, logits=logits).sample()
        else:
            seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
            eps = tf.random.stateless_normal(tf.shape(mean), seed=seeds[0])
            relaxed = tfd.RelaxedOneHotCategorical(tau, logits=logits).sample(seed=seeds[1])
        return tf.concat([mean + tf.exp(0.5 * log_var) * eps, relaxed], axis=-1)

    def embedding(self, params):
        mean, _, logits = self.split(params)
        return tf.concat([mean, tf.nn.softmax(logits, axis=-1)], axis=-1)

    def export_outputs(self, params):
        mean, log_var, logits = self.split(params)
        probs = tf.nn.softmax(logits, axis=-1)
        return {"embedding": tf.concat([mean, probs], axis=-1), "z_mean": mean, "z_log_var": log_var,
                "category_probs": probs, "category": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    def code_from_category(self, z_gauss, category) -> tf.Tensor:
        """z = concat(z_gauss, one_hot(category)): "category k, style z_gauss", ``[B, g + K]``."""
        return tf.concat([tf.cast(z_gauss, tf.float32),
                          tf.one_hot(tf.cast(category, tf.int32), self.categories, dtype=tf.float32)], axis=-1)

    def sample_prior(self, seeds):
        """One z = concat(z_gauss ~ N(0, I), one_hot(k ~ Uniform(K))) per seed row, stateless."""
        seeds = tf.cast(seeds, tf.int32)
        z_gauss = stateless_normal_rows(seeds, self.latent_dim)
        categories = tf.map_fn(
            lambda s: tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(s, 1),
                                                  minval=0, maxval=self.categories, dtype=tf.int32),
            seeds, fn_output_signature=tf.TensorSpec([], tf.int32))
        return self.code_from_category(z_gauss, categories)

    def iw_terms(self, params, num_samples, seed):
        """``(z [S, B, g + K], log q [S, B], log p [S, B])`` with an *exact* one-hot c ~ Cat(π):
        the importance weights of the discrete model (vae_tf.metrics.likelihood), log densities
        summed over the Gaussian dims plus the categorical log-probability (prior: −log K)."""
        mean, log_var, logits = self.split(params)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
        q_gauss = tfd.Normal(mean, tf.exp(0.5 * log_var))
        z_gauss = q_gauss.sample(num_samples, seed=seeds[0])
        q_cat = tfd.OneHotCategorical(logits=logits, dtype=tf.float32)
        c = q_cat.sample(num_samples, seed=seeds[1])
        log_q = tf.reduce_sum(q_gauss.log_prob(z_gauss), axis=-1) + q_cat.log_prob(c)
        log_p = tf.reduce_sum(tfd.Normal(0.0, 1.0).log_prob(z_gauss), axis=-1) - math.log(self.categories)
        return tf.concat([z_gauss, c], axis=-1), log_q, log_p

    # --- VAE and export hooks ----------------------------------------------------------------
    def update_diagnostics(self, terms: dict) -> dict:
        params = terms["params"]
        kl_gauss, kl_cat = self.kl_parts(params)
        self.kl_gaussian_tracker.update_state(tf.reduce_sum(kl_gauss, axis=-1))
        self.kl_categorical_tracker.update_state(kl_cat)
        probs = tf.nn.softmax(self.split(params)[2], axis=-1)
        for k in range(self.categories):
            self.usage_trackers[k].update_state(probs[:, k])
        usage = tf.stack([t.result() for t in self.usage_trackers])
        entropy = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(usage), usage))
        return {"category_entropy": entropy, "temperature": self.temperature()}

    def evaluation_diagnostics(self, post, kl):
        """The categorical part, which the Gaussian-part MI and active units do not see:
        ``kl_gaussian`` / ``kl_categorical`` (the two parts of the mean KL), ``category_usage_<k>``
        (E_x π_k(x)) and ``category_entropy`` (its entropy, log K when every category is used), as
        training logs them, and ``mi_category`` = I_q(x; c) = H(E_x π(x)) − E_x H(π(x)) over the
        encoded examples (exact for their empirical distribution; 0 when π does not depend on x,
        log K at most)."""
        import numpy as np
        from scipy.special import entr  # -p log p, 0 at p = 0

        probs = np.asarray(post["category_probs"], dtype=np.float64)
        usage = probs.mean(axis=0)
        usage_entropy = float(entr(usage).sum())
        out = {"kl_gaussian": float(kl[:, :-1].sum(axis=1).mean()), "kl_categorical": float(kl[:, -1].mean())}
        out.update({f"category_usage_{k}": float(u) for k, u in enumerate(usage)})
        out["category_entropy"] = usage_entropy
        out["mi_category"] = max(0.0, usage_entropy - float(entr(probs).sum(axis=1).mean()))
        return out

    def extra_signatures(self, model) -> dict:
        """``decode_category(z_gauss: float32[B, g], category: int32[B]) -> {x_mean, x_sample}``;
        a category outside ``[0, K)`` is refused (InvalidArgumentError: a 400 from a server)."""
        z_spec = tf.TensorSpec((None, self.latent_dim), tf.float32, name="z_gauss")
        category_spec = tf.TensorSpec((None,), tf.int32, name="category")
        return {"decode_category": traced(_decode_category, self, model, name="decode_category",
                                             input_signature=[z_spec, category_spec])}

    def layout(self) -> dict:
        return {**super().layout(), "gaussian_dims": self.latent_dim, "categories": self.categories,
                "code": f"concat(z_gauss[{self.latent_dim}], one_hot(category)[{self.categories}])",
                "embedding": f"concat(z_mean[{self.latent_dim}], category_probs[{self.categories}])",
                "kl_columns": f"{self.latent_dim} Gaussian dims, then the categorical part (column {self.latent_dim})",
                "temperature": self.temperature_schedule.describe()}

    def get_config(self):
        return {**super().get_config(), "categories": self.categories,
                "temperature": self.temperature_schedule.describe(), "log_var_clip": self.log_var_clip}


def _decode_category(latent: GaussianCategoricalLatent, model, z_gauss, category):
    """The ``decode_category`` signature's body (:meth:`GaussianCategoricalLatent.extra_signatures`)."""
    k = latent.categories
    valid = tf.reduce_all((category >= 0) & (category < k))
    # One row of each per code (in the graph, so TF Serving answers with it too; TensorFlow's own
    # "ConcatOp : Dimension 0 in both shapes must be equal" named neither input).
    rows = tf.equal(tf.shape(z_gauss)[0], tf.shape(category)[0])
    with tf.control_dependencies([
            tf.debugging.Assert(valid, [f"category must be in [0, {k})"]),
            tf.debugging.Assert(rows, ["z_gauss and category must have the same number of rows (one category per "
                                       "z_gauss row); got", tf.shape(z_gauss)[0], "and", tf.shape(category)[0]])]):
        z = latent.code_from_category(z_gauss, category)
    return model.decode(z)


__all__ = ["GaussianCategoricalLatent", "MIN_TEMPERATURE"]
