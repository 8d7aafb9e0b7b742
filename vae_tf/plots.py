"""Figures (matplotlib, Agg backend): reconstructions, ancestral vs mean samples, latent
traversals, KL per dimension. Functions take arrays and return ``matplotlib.figure.Figure``;
:func:`model_figures` makes the standard set for a trained model.

Images are ``(N, H, W, C)`` with C = 1 or 3; vectors ``(N, D)`` are drawn as line plots.
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ACTIVE_KL_THRESHOLD = 0.01


def _is_image(x: np.ndarray) -> bool:
    return x.ndim == 4 and x.shape[-1] in (1, 3)


def _plot_vector(ax, item: np.ndarray, value_range) -> None:
    ax.plot(item.reshape(-1), lw=0.8)
    ax.set_ylim(*value_range)
    ax.set_xticks([])


def image_mosaic(rows: list, n: int, value_range=(0.0, 1.0), pad: int = 1) -> np.ndarray:
    """The images of ``rows`` (each ``(k ≤ n, H, W, C)``, C = 1 or 3) tiled into one RGB array in
    [0, 1], row i of the mosaic holding ``rows[i]``, ``pad`` white pixels between tiles and white
    where a row is shorter than ``n``; values clipped to ``value_range`` and scaled to [0, 1]."""
    lo, hi = (float(v) for v in value_range)
    height, width = np.asarray(rows[0]).shape[1:3]
    mosaic = np.ones((len(rows) * (height + pad) - pad, n * (width + pad) - pad, 3), np.float32)
    for i, row in enumerate(rows):
        row = (np.clip(np.asarray(row, np.float32), lo, hi) - lo) / (hi - lo)
        for j, image in enumerate(row[:n]):
            top, left = i * (height + pad), j * (width + pad)
            mosaic[top:top + height, left:left + width] = image  # C = 1 broadcasts to grey
    return mosaic


def image_rows(rows: dict[str, np.ndarray], value_range=(0.0, 1.0), title: str | None = None):
    """One labelled row per entry (all rows the same length). Images are drawn as one mosaic in
    one axes (an axes per image made a 72-image traversal take seconds); vectors as line plots."""
    labels = list(rows)
    n = max(len(r) for r in rows.values())
    if all(_is_image(np.asarray(r)) for r in rows.values()):
        height, pad = np.asarray(rows[labels[0]]).shape[1], 1
        fig, ax = plt.subplots(figsize=(1.1 * n, 1.2 * len(labels)))
        ax.imshow(image_mosaic([rows[label] for label in labels], n, value_range, pad), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([i * (height + pad) + (height - 1) / 2 for i in range(len(labels))], labels, fontsize=9)
        ax.tick_params(axis="y", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        fig, axes = plt.subplots(len(labels), n, figsize=(1.1 * n, 1.2 * len(labels)), squeeze=False)
        for i, label in enumerate(labels):
            for j in range(n):
                ax = axes[i, j]
                if j < len(rows[label]):
                    _plot_vector(ax, np.asarray(rows[label][j]), value_range)
                else:
                    ax.axis("off")
            axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10 if "\n" in title else 12)
    fig.tight_layout()
    return fig


def reconstructions(x: np.ndarray, x_mean: np.ndarray, value_range=(0.0, 1.0)):
    """Inputs above their deterministic reconstructions."""
    return image_rows({"input": x, "reconstruction": x_mean}, value_range, "Reconstructions (decoder mean)")


def samples(x_mean: np.ndarray, x_sample: np.ndarray, value_range=(0.0, 1.0)):
    """The same prior draws z decoded two ways: the mean μ_x(z) and an ancestral x ~ p(x|z)."""
    return image_rows({"mean μ_x(z)": x_mean, "ancestral x~p(x|z)": x_sample}, value_range,
                      "Samples from the prior: deterministic vs ancestral decoding")


def traversals(grid: np.ndarray, values: np.ndarray, dims: list[int], value_range=(0.0, 1.0), *,
               by_kl: bool = False, of: int | None = None):
    """``grid[i, j]``: decode with latent ``dims[i]`` set to ``values[j]``, the other dims held at
    the first example's posterior mean; ``by_kl``: the rows are the dims of largest KL, in that
    order (``of``: how many dims the code has), which the title says."""
    rows = {f"z[{d}]": grid[i] for i, d in enumerate(dims)}
    if by_kl:
        order = (f"all {len(dims)} dims, by KL, largest first" if of == len(dims) else
                 f"the {len(dims)} dims of largest KL{'' if of is None else f' of {of}'}, largest first")
    else:
        order = "dims " + ", ".join(map(str, dims))
    title = (f"Latent traversals over [{values[0]:.1f}, {values[-1]:.1f}]\n{order}; the other dims at the first "
             "example's posterior mean")
    return image_rows(rows, value_range, title)


def kl_per_dim(kl: np.ndarray, threshold: float = ACTIVE_KL_THRESHOLD):
    """Bar chart of the data-averaged KL per latent dimension, collapsed dims marked."""
    kl = np.asarray(kl, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(kl) + 1.5), 3.0))
    colors = ["tab:blue" if v > threshold else "tab:gray" for v in kl]
    ax.bar(np.arange(len(kl)), kl, color=colors)
    ax.axhline(threshold, color="tab:red", lw=0.8, ls="--", label=f"{threshold} nats")
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("E_x KL(q(z_i|x) || p(z_i)) [nats]")
    ax.set_title(f"KL per dimension: {(kl > threshold).sum()} of {len(kl)} above {threshold}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def model_figures(model, x: np.ndarray, *, value_range=(0.0, 1.0), kl: np.ndarray | None = None,
                  n: int = 10, traversal_steps: int = 9, seed: int = 0) -> dict[str, "plt.Figure"]:
    """The standard figures for a trained :class:`vae_tf.models.VAE` on examples ``x``.

    Returns ``{file name: figure}``: reconstructions, prior samples (mean and ancestral decodes
    side by side), traversals of the (up to 8) dims with the largest KL, and KL per dimension.
    """
    from vae_tf.export import serving_functions

    signatures = serving_functions(model)  # traced once, shared with the export (its docstring)
    x = np.asarray(x[:n], dtype=np.float32)
    figures = {"reconstructions.png": reconstructions(x, np.asarray(signatures["reconstruct"](x)["x_mean"]), value_range)}
    seeds = np.stack([np.full(n, seed, np.int32), np.arange(n, dtype=np.int32)], axis=1)
    drawn = signatures["sample"](seeds)
    figures["samples.png"] = samples(np.asarray(drawn["x_mean"]), np.asarray(drawn["x_sample"]), value_range)

    code = np.asarray(signatures["encode"](x[:1])["embedding"])[0]
    if code.shape[0] == model.latent.code_size:
        order = np.argsort(-kl) if kl is not None else np.arange(code.shape[0])
        dims = [int(d) for d in order[: min(8, code.shape[0])]]
        values = np.linspace(-3.0, 3.0, traversal_steps, dtype=np.float32)
        z = np.repeat(code[None, None, :], len(dims), 0).repeat(traversal_steps, 1)
        for i, d in enumerate(dims):
            z[i, :, d] = values
        decoded = np.asarray(signatures["decode"](z.reshape(-1, code.shape[0]))["x_mean"])
        grid = decoded.reshape((len(dims), traversal_steps) + decoded.shape[1:])
        figures["traversals.png"] = traversals(grid, values, dims, value_range, by_kl=kl is not None,
                                               of=code.shape[0])
    if kl is not None:
        figures["kl_per_dim.png"] = kl_per_dim(kl)
    return figures


def save_figures(figures: dict, directory) -> list[str]:
    """Write figures as PNGs into ``directory``, closing them; returns the paths."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = directory / name
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(str(path))
    return paths


# --- evaluation figures (vae_tf.metrics.evaluate) ---------------------------------------------------

def collapse_curve(eps: np.ndarray, fractions: np.ndarray, delta: float = 0.01, *,
                   marks: dict | None = None, num_dims: int | None = None):
    """Fraction of (ε, δ)-collapsed latent dimensions against ε (Lucas et al. 2019, §6.2),
    log x axis; ``marks`` ``{ε: fraction}`` adds the fixed-grid points as dots."""
    eps = np.asarray(eps, dtype=float)
    fractions = np.asarray(fractions, dtype=float)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.step(eps, fractions, where="post", color="tab:blue", lw=1.5)
    if marks:
        xs = np.array(sorted(marks), dtype=float)
        ax.plot(xs, [marks[x] for x in sorted(marks)], "o", color="tab:red", ms=4, label="reported ε")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("ε [nats]")
    ax.set_ylabel("fraction of dims collapsed")
    dims = f" of {num_dims} dims" if num_dims else ""
    ax.set_title(f"(ε, δ={delta:g})-posterior collapse{dims}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def tsne_scatter(embedding: np.ndarray, labels: np.ndarray | None = None, title: str = "t-SNE of the embeddings"):
    """2-D scatter of a t-SNE embedding, coloured by integer label (legend up to 20 classes)."""
    embedding = np.asarray(embedding, dtype=float)
    fig, ax = plt.subplots(figsize=(5.0, 4.5))
    if labels is None:
        ax.scatter(embedding[:, 0], embedding[:, 1], s=4, alpha=0.7, color="tab:blue")
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            sel = labels == c
            ax.scatter(embedding[sel, 0], embedding[sel, 1], s=4, alpha=0.7,
                       color=cmap(i % cmap.N), label=str(c))
        if len(classes) <= 20:
            ax.legend(loc="best", fontsize=7, markerscale=3, ncol=2 if len(classes) > 10 else 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- latent-family figures (vae_tf.latents.categorical) ----------------------------------------

def category_usage(category_probs: np.ndarray):
    """Usage histogram of a categorical latent (``category_probs`` ``(N, K)`` from ``encode``):
    per category, the average probability E_x π_k(x) (soft usage) next to the fraction of examples
    whose most probable category it is (hard usage); the title gives the entropy of the average
    distribution (nats) against its maximum log K."""
    probs = np.asarray(category_probs, dtype=float)
    k = probs.shape[1]
    soft = probs.mean(axis=0)
    hard = np.bincount(probs.argmax(axis=1), minlength=k) / max(len(probs), 1)
    entropy = float(-(soft[soft > 0] * np.log(soft[soft > 0])).sum())
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k + 1.5), 3.0))
    positions = np.arange(k)
    ax.bar(positions - 0.2, soft, width=0.4, color="tab:blue", label="E_x π_k(x)")
    ax.bar(positions + 0.2, hard, width=0.4, color="tab:orange", label="argmax share")
    ax.axhline(1.0 / k, color="tab:gray", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(positions)
    ax.set_xlabel("category")
    ax.set_ylabel("usage")
    ax.set_title(f"Category usage: entropy {entropy:.2f} of log K = {np.log(k):.2f} nats", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


# --- text models: tables instead of image grids ------------------------------------------------

#: Characters that start Markdown inline formatting (code, emphasis, links, strike-through) or
#: end a table cell, escaped with a backslash; ``<``, ``>`` and ``&`` are written as HTML
#: entities, so that ``<unk>`` is shown rather than read as an HTML tag.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]~|])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_text(text) -> str:
    """``text`` as Markdown that renders as exactly that text on one line (CommonMark with
    GitHub's tables, what MLflow's artefact view renders): a sentence holding backquotes,
    asterisks, underscores or ``<unk>`` is shown as written, not formatted or hidden."""
    text = " ".join(str(text).splitlines())
    text = "".join(_HTML.get(c, c) for c in text)
    return _MARKDOWN_INLINE.sub(r"\\\1", text)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text) -> str:
        return markdown_text(text) or "∅"

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _decoded(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()]


def text_tables(model, x, *, n: int = 10, steps: int = 7, seed: int = 0) -> dict[str, str]:
    """The text analogue of :func:`model_figures` for a sentence model: Markdown tables (MLflow's
    artefact view renders them) of reconstructions (the greedy decode of the posterior mean),
    prior samples (greedy and sampled decodes of the same z side by side) and a latent
    interpolation between the posterior means of two sentences (greedy decodes at ``steps``
    points on the line between them). Returns ``{file name: Markdown}``."""
    from vae_tf.export import serving_functions

    signatures = serving_functions(model)  # in graph mode, traced once and shared with the export
    sentences = [str(s) for s in np.asarray(x, dtype=object)[:n]]
    strings = np.asarray(sentences, dtype=object)
    reconstructed = _decoded(signatures["reconstruct"](strings)["text"])
    tables = {"reconstructions.md": "# Reconstructions (greedy decode of the posterior mean)\n\n" + _markdown_table(
        ["input", "reconstruction"], [[a, b] for a, b in zip(sentences, reconstructed)])}
    seeds = np.stack([np.full(n, seed, np.int32), np.arange(n, dtype=np.int32)], axis=1)
    drawn = signatures["sample"](seeds)
    greedy = _decoded(signatures["decode"](drawn["z"])["text"])
    tables["samples.md"] = ("# Prior samples: z ~ p(z), decoded greedily and by sampling\n\n" + _markdown_table(
        ["greedy", "sampled"], [[a, b] for a, b in zip(greedy, _decoded(drawn["text"]))]))
    if len(sentences) >= 2:
        ends = np.asarray(signatures["encode"](strings[:2])["embedding"])
        weights = np.linspace(0.0, 1.0, steps)[:, None]
        line = (1.0 - weights) * ends[0] + weights * ends[1]
        texts = _decoded(signatures["decode"](line.astype(np.float32))["text"])
        rows = [[f"{w:.2f}", t] for w, t in zip(weights[:, 0], texts)]
        tables["interpolation.md"] = (f"# Latent interpolation\n\nfrom: {markdown_text(sentences[0]) or '∅'}\n\n"
                                      f"to: {markdown_text(sentences[1]) or '∅'}\n\n"
                                      + _markdown_table(["t", "greedy decode of (1 − t)·μ(from) + t·μ(to)"], rows))
    return tables


def latent_scatter(means: np.ndarray, true_z: np.ndarray, labels=None):
    """Posterior means against the true latent variable (He et al. 2019, Fig. 1): the first two
    dims of the code next to the generator's z ∈ R², coloured by mixture component."""
    means, true_z = np.asarray(means), np.asarray(true_z)
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 4.0))
    colour = None if labels is None else np.asarray(labels)
    for ax, points, title in ((axes[0], true_z, "true z"), (axes[1], means, "posterior mean E[z|x]")):
        if points.shape[1] >= 2:
            ax.scatter(points[:, 0], points[:, 1], s=4, c=colour, cmap="tab10")
        else:
            ax.scatter(points[:, 0], np.zeros(len(points)), s=4, c=colour, cmap="tab10")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("dim 0")
        ax.set_ylabel("dim 1")
    fig.tight_layout()
    return fig
