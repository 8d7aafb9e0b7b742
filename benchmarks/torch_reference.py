"""The PyTorch eager reference of the conv VAE (the optional ``bench`` extra: ``torch==2.13.0``, CPU).

The same architecture as ``vae_tf.networks.conv_encoder`` / ``conv_decoder`` with the benchmark's
reference options (28x28x1 input, filters 32/64, dense 256, latent 16, kernel 3, ReLU):

    encoder  Conv2d(1→32, 3, stride 2) → ReLU → Conv2d(32→64, 3, stride 2) → ReLU → flatten
             → Linear(3136→256) → ReLU → Linear(256→2·16)                      (μ, log σ²)
    decoder  Linear(16→256) → ReLU → Linear(256→3136) → ReLU → 64x7x7
             → ConvTranspose2d(64→32, 3, stride 2) → ReLU → ConvTranspose2d(32→1, 3, stride 2)

and the same loss as the vae-tf ELBO with β = 1 (DESIGN.md conventions): per example the
Bernoulli log-likelihood (``−binary_cross_entropy_with_logits``) summed over pixels and the
analytic KL(N(μ, σ²) ‖ N(0, 1)) summed over latent dimensions, log σ² clipped to ±20 as
``GaussianLatent`` does; the loss is the negative mean over the batch. Adam with Keras' defaults
(lr 1e-3, β 0.9/0.999, ε 1e-7).

Padding. Keras' ``padding="same"`` with stride 2 on an even size pads only the bottom/right
(0 before, 1 after); the idiomatic PyTorch layer pads both sides (``padding=1``; transposed:
``padding=1, output_padding=1``). Same shapes, parameters and FLOPs, pixels shifted by one.
``padding="idiomatic"`` (what a PyTorch user writes, the timed default) uses those;
``padding="tf"`` reproduces Keras exactly (explicit right/bottom pad, uncropped transposed conv
then a crop) and is what :func:`check_same_loss` uses to prove the two models compute the same
function once the Keras weights are copied in (:func:`copy_keras_weights`).

Data layout: the images are NCHW tensors; ``channels_last=True`` stores them (and the weights)
in ``torch.channels_last`` memory format, which oneDNN's CPU convolutions prefer.

``compile_backend`` (``TorchTrainer``): the same trainer with the loss (forward, and through
AOTAutograd the backward) under ``torch.compile`` (``"inductor"``, PyTorch's default backend, which
generates C++/OpenMP code on a CPU and Triton kernels on a GPU; ``"aot_eager"`` traces the same
graphs without code generation, for smoke tests). ``device``: ``"cpu"`` or ``"cuda"``.

``benchmarks/train_throughput.py`` imports this module; run on its own
(``python benchmarks/torch_reference.py``) it times the six ``channels_last`` x Adam settings
against each other, which is how the benchmark's defaults were chosen.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import numpy as np

LOG_VAR_CLIP = 20.0
KERAS_ADAM_EPSILON = 1e-7


def import_torch():
    """``torch``, or None with the reason (the extra is optional: callers skip the reference)."""
    try:
        import torch
    except ImportError as err:
        return None, f"{err}"
    return torch, None


def build_model(torch, data_shape=(28, 28, 1), filters=(32, 64), dense: int = 256, latent_dim: int = 16,
                kernel_size: int = 3, padding: str = "idiomatic"):
    """The conv VAE as a ``torch.nn.Module`` whose ``loss(x, eps)`` is the negative ELBO (β = 1)."""
    nn, F = torch.nn, torch.nn.functional
    if padding not in ("idiomatic", "tf"):
        raise ValueError(f"padding must be 'idiomatic' or 'tf', got {padding!r}")
    if kernel_size != 3:
        raise ValueError("the reference is written for kernel_size 3")
    height, width, channels = (int(d) for d in data_shape)
    up = 2 ** len(filters)
    if height % up or width % up:
        raise ValueError(f"the reference needs H and W divisible by {up} (no crop), got {data_shape}")
    h0, w0 = height // up, width // up
    tf_pad = padding == "tf"
    pad = 0 if tf_pad else 1

    class ConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            ins = [channels, *filters[:-1]]
            self.convs = nn.ModuleList(nn.Conv2d(i, o, kernel_size, stride=2, padding=pad)
                                       for i, o in zip(ins, filters))
            self.enc_dense = nn.Linear(h0 * w0 * filters[-1], dense)
            self.enc_params = nn.Linear(dense, 2 * latent_dim)
            self.dec_dense0 = nn.Linear(latent_dim, dense)
            self.dec_dense1 = nn.Linear(dense, h0 * w0 * filters[-1])
            outs = [*reversed(filters[:-1]), channels]
            self.deconvs = nn.ModuleList(
                nn.ConvTranspose2d(i, o, kernel_size, stride=2, padding=pad, output_padding=0 if tf_pad else 1)
                for i, o in zip(reversed(filters), outs))
            self.latent_dim = latent_dim
            self.grid = (filters[-1], h0, w0)

        def encode(self, x):
            h = x
            for conv in self.convs:
                if tf_pad:  # Keras "same", stride 2, even size: pad 0 before, 1 after
                    h = F.pad(h, (0, 1, 0, 1))
                h = F.relu(conv(h))
            h = F.relu(self.enc_dense(torch.flatten(h, 1)))
            return self.enc_params(h)

        def decode(self, z):
            h = F.relu(self.dec_dense0(z))
            h = F.relu(self.dec_dense1(h)).view(-1, *self.grid)
            for i, deconv in enumerate(self.deconvs):
                h = deconv(h)
                if tf_pad:  # uncropped: 2n + 1; Keras keeps the first 2n
                    h = h[:, :, :-1, :-1]
                if i < len(self.deconvs) - 1:
                    h = F.relu(h)
            return h

        def loss(self, x, eps):
            """−mean_batch(Σ_pixels log Bernoulli(x | logits) − Σ_latent KL(q ‖ N(0, 1))). Under
            autocast the networks run in half precision and, as in vae-tf's mixed policies, the
            latent, the likelihood and the loss in float32 (``.float()`` is a no-op otherwise)."""
            mean, log_var = self.encode(x).float().chunk(2, dim=1)
            log_var = log_var.clamp(-LOG_VAR_CLIP, LOG_VAR_CLIP)
            z = mean + torch.exp(0.5 * log_var) * eps
            logits = self.decode(z).float()
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
            kl = 0.5 * (mean.square() + log_var.exp() - log_var - 1.0).sum(dim=1)
            return (nll + kl).mean()

    return ConvVAE()


def parameter_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def keras_conv_weights(encoder, decoder) -> dict[str, list[list[np.ndarray]]]:
    """The Keras conv encoder/decoder weights as NumPy arrays, by layer kind in layer order
    (``convs``, ``enc_dense``, ``dec_dense``, ``deconvs``): what :func:`load_keras_weights` takes,
    also in a process without TensorFlow (benchmarks/train_processes.py sends them there)."""
    import keras

    def kernels(net, kind):
        return [layer.get_weights() for layer in net.layers if isinstance(layer, kind)]

    return {"convs": kernels(encoder, keras.layers.Conv2D), "enc_dense": kernels(encoder, keras.layers.Dense),
            "dec_dense": kernels(decoder, keras.layers.Dense), "deconvs": kernels(decoder, keras.layers.Conv2DTranspose)}


def load_keras_weights(torch, model, weights: dict) -> None:
    """Load Keras conv weights (:func:`keras_conv_weights`) into ``model`` (layouts: conv HWIO →
    OIHW, transposed conv HWOI → IOHW, dense (in, out) → (out, in); Keras flattens NHWC in (h, w, c)
    order, PyTorch NCHW in (c, h, w), so the dense layers next to the flatten/reshape are permuted)."""
    c, h, w = model.grid
    # index of the Keras (h, w, c) feature for every PyTorch (c, h, w) position
    order = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)

    def put(param, value):
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    for conv, (k, b) in zip(model.convs, weights["convs"]):
        put(conv.weight, k.transpose(3, 2, 0, 1))
        put(conv.bias, b)
    (k0, b0), (k1, b1) = weights["enc_dense"]
    put(model.enc_dense.weight, k0[order].T)
    put(model.enc_dense.bias, b0)
    put(model.enc_params.weight, k1.T)
    put(model.enc_params.bias, b1)
    (k0, b0), (k1, b1) = weights["dec_dense"]
    put(model.dec_dense0.weight, k0.T)
    put(model.dec_dense0.bias, b0)
    put(model.dec_dense1.weight, k1[:, order].T)
    put(model.dec_dense1.bias, b1[order])
    for deconv, (k, b) in zip(model.deconvs, weights["deconvs"]):
        put(deconv.weight, k.transpose(3, 2, 0, 1))
        put(deconv.bias, b)


def copy_keras_weights(torch, model, encoder, decoder) -> None:
    """Load the Keras conv encoder/decoder weights into ``model`` (:func:`load_keras_weights`)."""
    load_keras_weights(torch, model, keras_conv_weights(encoder, decoder))


def nchw(torch, x_nhwc: np.ndarray, channels_last: bool = False):
    """A float32 NCHW tensor of NHWC images (``channels_last``: NHWC memory, NCHW view)."""
    t = torch.from_numpy(np.ascontiguousarray(x_nhwc, dtype=np.float32)).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class TorchTrainer:
    """The eager training loop: every epoch a fresh permutation (as the tf.data pipeline's
    reshuffle), batches gathered from the in-memory tensor, ``zero_grad → loss → backward → step``.

    Options a demanding user would try: ``channels_last`` memory format, Adam ``fused`` (one
    kernel for all parameters) or ``foreach``, ``padding`` (module docstring), and ``autocast``
    (``"bfloat16"`` or ``"float16"``): PyTorch's automatic mixed precision, the loss computed under
    ``torch.autocast`` on the trainer's device, float32 weights and optimizer; ``float16`` also
    scales the loss (``torch.amp.GradScaler``, dynamic), as Keras' ``mixed_float16`` does."""

    def __init__(self, torch, x_nhwc: np.ndarray, batch_size: int, *, latent_dim: int = 16, learning_rate: float = 1e-3,
                 channels_last: bool = True, adam: str = "fused", padding: str = "idiomatic", seed: int = 0,
                 compile_backend: str | None = None, compile_mode: str | None = None, device: str = "cpu",
                 autocast: str | None = None, **arch):
        if autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {autocast!r}")
        self.torch = torch
        torch.manual_seed(seed)
        self.model = build_model(torch, x_nhwc.shape[1:], latent_dim=latent_dim, padding=padding, **arch).to(device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[adam]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate, eps=KERAS_ADAM_EPSILON, **options)
        # The compiled loss shares the module's parameters: weights copied into ``self.model`` later
        # (copy_keras_weights) are the ones it trains.
        self.loss = (self.model.loss if compile_backend is None
                     else torch.compile(self.model.loss, backend=compile_backend, mode=compile_mode))
        self.x = nchw(torch, x_nhwc, channels_last).to(device)
        self.device = device
        self.batch_size = int(batch_size)
        self.latent_dim = int(latent_dim)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        device_type = torch.device(device).type
        self.autocast = (contextlib.nullcontext if autocast is None else
                         functools.partial(torch.autocast, device_type=device_type, dtype=getattr(torch, autocast)))
        self.scaler = torch.amp.GradScaler(device_type) if autocast == "float16" else None
        self.settings = {"channels_last": channels_last, "adam": adam, "padding": padding,
                         "compile": None if compile_backend is None else {"backend": compile_backend, "mode": compile_mode},
                         "device": device, "autocast": autocast}

    def fit_epoch(self) -> tuple[float, float]:
        """One epoch; returns (seconds, mean loss of the epoch)."""
        torch, model, opt = self.torch, self.model, self.optimizer
        n, b = len(self.x), self.batch_size
        start = time.perf_counter()
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        total = torch.zeros((), device=self.device)
        model.train()
        for i in range(math.ceil(n / b)):
            xb = self.x[perm[i * b:(i + 1) * b]]
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            eps = torch.randn(xb.shape[0], self.latent_dim, generator=self.generator, device=self.device)
            opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss = self.loss(xb, eps)
            if self.scaler is None:
                loss.backward()
                opt.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(opt)
                self.scaler.update()
            total += loss.detach()
        mean_loss = float(total) / math.ceil(n / b)  # float() waits for the device
        return time.perf_counter() - start, mean_loss


def set_threads(torch, threads: int | None) -> dict:
    """Give PyTorch ``threads`` intra-op threads (and as many inter-op threads); report them."""
    if threads is not None:
        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(int(threads))
        except RuntimeError:  # only settable before the first parallel work; keep what is there
            pass
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "version": torch.__version__,
            "parallel_backend": next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                                      if line.startswith("ATen parallel backend")), "unknown")}


__all__ = ["keras_conv_weights", "load_keras_weights", "TorchTrainer", "build_model", "copy_keras_weights", "import_torch", "nchw", "parameter_count", "set_threads"]


# --- which PyTorch settings to time: `python benchmarks/torch_reference.py` ---------------------------
def main(argv=None) -> int:
    """Time the PyTorch reference under each ``channels_last`` x Adam implementation, interleaved
    (PyTorch only, no TensorFlow in the process), to pick the settings ``train_throughput.py`` uses."""
    import argparse
    import statistics
    import sys

    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--examples", type=int, default=4096, help="images per epoch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (None: one per usable CPU)")
    args = p.parse_args(argv)
    torch, why = import_torch()
    if torch is None:
        print(f"PyTorch is not installed ({why}); pip install -e '.[bench]' adds it", file=sys.stderr)
        return 2
    import os

    info = set_threads(torch, args.threads or len(os.sched_getaffinity(0)))
    x = np.random.default_rng(0).random((args.examples, 28, 28, 1), dtype=np.float32)
    trainers = {(cl, adam): TorchTrainer(torch, x, 128, channels_last=cl, adam=adam)
                for cl in (True, False) for adam in ("fused", "foreach", "loop")}
    for trainer in trainers.values():
        trainer.fit_epoch()
    keys = list(trainers)
    speeds = {k: [] for k in keys}
    for r in range(args.rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            speeds[k].append(args.examples / trainers[k].fit_epoch()[0])
    print(f"PyTorch {info['version']}, {info['intra_op_threads']} threads ({info['parallel_backend']}); conv reference, "
          f"batch 128, {args.examples:,} images per epoch, {args.rounds} interleaved rounds\n")
    print("| channels_last | Adam | img/s median (min–max) | fastest round |\n|---|---|---:|---:|")
    for (cl, adam), v in speeds.items():
        print(f"| {cl} | {adam} | {statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f}) | {max(v):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
