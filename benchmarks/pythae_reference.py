"""pythae's own VAE and trainer on the reference conv architecture (the optional ``bench`` extra).

What a pythae user writes (pythae 0.1.2's README, "Training a model" and "Define you own
Autoencoder architecture"): ``pythae.models.VAE`` with a ``VAEConfig`` and custom
``BaseEncoder`` / ``BaseDecoder`` networks, trained by ``pythae.trainers.BaseTrainer`` from a
``BaseTrainerConfig`` on a ``pythae.data.datasets.BaseDataset``.

Networks: the layers of :mod:`benchmarks.torch_reference`'s ``ConvVAE`` (the encoder owns its
convolutions and dense layers, the decoder its own; same parameter count, and the benchmark copies
the same starting weights in), the decoder ending in a sigmoid because pythae's
``reconstruction_loss="bce"`` takes probabilities.

Loss (pythae's ``VAE.loss_function`` with ``reconstruction_loss="bce"``): per example
``F.binary_cross_entropy(x̂, x)`` summed over pixels plus the analytic KL(N(μ, σ²) ‖ N(0, 1))
summed over latent dimensions, the mean over the batch: the vae-tf ELBO's scale (DESIGN.md
conventions). Differences that do not change the value here: pythae takes the log of the sigmoid's
output (clamped at −100) where vae-tf uses logits, and it does not clip log σ² (vae-tf clips at
±20). :func:`loss_with_noise` evaluates pythae's own loss function for given noise, which is how
the benchmark checks it against Keras.

Trainer settings (:class:`PythaeTrainer`): ``BaseTrainerConfig(num_epochs, learning_rate=1e-3,
per_device_train_batch_size=batch)`` and pythae's defaults for the rest: Adam (PyTorch's default
implementation, ε = 1e-8), no learning-rate scheduler, ``steps_saving=None`` (no per-epoch
checkpoints, pythae's default; the README's example saves every 20 epochs), ``steps_predict=None``,
no evaluation set, ``train_dataloader_num_workers=0``. What pythae does that no option turns off,
all timed: a ``DataLoader`` over the per-example ``BaseDataset`` (a ``DatasetOutput`` per image,
then collated), ``loss.item()`` after every step, a deep copy of the model at the end of every
epoch whose loss improved (``keep_best_on_train``, forced without an evaluation set), the tqdm
progress bar (its output is swallowed). ``train()`` also creates a run folder and saves the final
model after the last epoch; the benchmark times epochs only and removes the folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time

import numpy as np

from benchmarks import torch_reference


def import_pythae():
    """``pythae``, or None with the reason (the extra is optional: callers skip the variant)."""
    try:
        import pythae
        import pythae.models  # noqa: F401  (the import a user's script pays)
        import pythae.trainers  # noqa: F401
    except ImportError as err:
        return None, f"{err}"
    return pythae, None


def build_model(torch, data_shape=(28, 28, 1), *, latent_dim: int = 16, padding: str = "idiomatic", **arch):
    """``(pythae VAE, ConvVAE)``: pythae's ``VAE`` whose encoder and decoder are the layers of the
    ``ConvVAE`` returned next to it (shared parameters: weights copied into the ConvVAE are the
    pythae model's)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    net = torch_reference.build_model(torch, data_shape, latent_dim=latent_dim, padding=padding, **arch)
    conv_vae = type(net)  # its encode / decode read only the attributes each wrapper copies

    class ConvEncoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.convs, self.enc_dense, self.enc_params = net.convs, net.enc_dense, net.enc_params

        def forward(self, x):
            mean, log_var = conv_vae.encode(self, x).chunk(2, dim=1)
            return ModelOutput(embedding=mean, log_covariance=log_var)

    class ConvDecoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.dec_dense0, self.dec_dense1, self.deconvs, self.grid = (net.dec_dense0, net.dec_dense1, net.deconvs,
                                                                         net.grid)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(conv_vae.decode(self, z)))

    height, width, channels = (int(d) for d in data_shape)
    config = VAEConfig(input_dim=(channels, height, width), latent_dim=int(latent_dim), reconstruction_loss="bce")
    return VAE(model_config=config, encoder=ConvEncoder(), decoder=ConvDecoder()), net


def loss_with_noise(model, x_nchw, eps):
    """pythae's own ``loss_function`` of ``model`` on ``x`` with the reparameterisation noise
    ``eps`` (its ``forward`` draws its own)."""
    import torch

    out = model.encoder(x_nchw)
    mean, log_var = out.embedding, out.log_covariance
    z = mean + torch.exp(0.5 * log_var) * eps
    recon = model.decoder(z).reconstruction
    loss, _, _ = model.loss_function(recon, x_nchw, mean, log_var, z)
    return loss


@contextlib.contextmanager
def quiet():
    """pythae's console logging and tqdm bars swallowed (the benchmark's stderr is its progress log)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("pythae")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class PythaeTrainer:
    """pythae's ``BaseTrainer`` on the conv reference (module docstring); ``fit(epochs)`` runs
    ``trainer.train()`` for that many epochs and returns each epoch's seconds (from pythae's
    ``on_epoch_begin`` to its ``on_epoch_end`` callback, i.e. the training loop and the
    best-model copy) and the last epoch's mean loss."""

    def __init__(self, torch, x_nhwc: np.ndarray, batch_size: int, *, workdir, latent_dim: int = 16,
                 learning_rate: float = 1e-3, padding: str = "idiomatic", seed: int = 0, **arch):
        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback

        class EpochTimer(TrainingCallback):
            def __init__(self):
                self.seconds, self.loss, self._start = [], float("nan"), 0.0

            def on_epoch_begin(self, training_config, **kwargs):
                self._start = time.perf_counter()

            def on_epoch_end(self, training_config, **kwargs):
                self.seconds.append(time.perf_counter() - self._start)

            def on_log(self, training_config, logs, **kwargs):
                self.loss = float(logs["train_epoch_loss"])

        torch.manual_seed(seed)
        self.model, self.net = build_model(torch, x_nhwc.shape[1:], latent_dim=latent_dim, padding=padding, **arch)
        x = torch_reference.nchw(torch, x_nhwc)
        self.config = BaseTrainerConfig(output_dir=str(workdir), num_epochs=1, learning_rate=learning_rate,
                                        per_device_train_batch_size=int(batch_size),
                                        per_device_eval_batch_size=int(batch_size), seed=seed)
        self.timer = EpochTimer()
        with quiet():
            self.trainer = BaseTrainer(model=self.model, train_dataset=BaseDataset(x, torch.zeros(len(x))),
                                       training_config=self.config, callbacks=[self.timer])
        self.settings = {"optimizer": self.config.optimizer_cls, "learning_rate": learning_rate,
                         "batch_size": int(batch_size), "steps_saving": self.config.steps_saving,
                         "padding": padding, "device": str(self.trainer.device)}

    def fit(self, epochs: int) -> tuple[list[float], float]:
        self.config.num_epochs = int(epochs)
        self.timer.seconds = []
        with quiet():
            self.trainer.train()
        shutil.rmtree(self.trainer.training_dir, ignore_errors=True)  # its final-model save
        return self.timer.seconds, self.timer.loss


__all__ = ["PythaeTrainer", "build_model", "import_pythae", "loss_with_noise", "quiet"]
