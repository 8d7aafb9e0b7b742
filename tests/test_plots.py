"""vae_tf.plots: the image grids are one mosaic in one axes, each tile where it belongs."""

from __future__ import annotations

import html
from html.parser import HTMLParser

import numpy as np
import pytest

from vae_tf import plots


def test_mosaic_puts_each_image_in_its_tile_scaled_clipped_and_padded_white():
    rng = np.random.default_rng(0)
    top = rng.uniform(-1.0, 1.0, (3, 2, 4, 1))     # value range [-1, 1], grey
    bottom = rng.uniform(-1.5, 1.5, (2, 2, 4, 1))  # one short row; values outside the range
    mosaic = plots.image_mosaic([top, bottom], 3, value_range=(-1.0, 1.0))
    assert mosaic.shape == (2 * 2 + 1, 3 * 4 + 2, 3) and mosaic.dtype == np.float32
    for i, row in enumerate((top, bottom)):
        for j in range(3):
            tile = mosaic[3 * i:3 * i + 2, 5 * j:5 * j + 4]
            if j < len(row):
                expected = (np.minimum(np.maximum(row[j, ..., 0], -1.0), 1.0) + 1.0) / 2.0
                for channel in range(3):
                    np.testing.assert_allclose(tile[..., channel], expected, rtol=0, atol=1e-6)
            else:
                assert np.all(tile == 1.0)  # the short row's missing tile is white
    assert np.all(mosaic[2] == 1.0) and np.all(mosaic[:, 4] == 1.0) and np.all(mosaic[:, 9] == 1.0)  # padding


def test_mosaic_keeps_colour_images_colour():
    image = np.zeros((1, 2, 2, 3), np.float32)
    image[..., 0] = 1.0  # red
    mosaic = plots.image_mosaic([image, image], 1)
    np.testing.assert_array_equal(mosaic[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(mosaic[3, 1], [1.0, 0.0, 0.0])


def test_image_rows_draws_one_labelled_mosaic():
    rows = {"input": np.full((4, 3, 3, 1), 0.25, np.float32), "reconstruction": np.full((4, 3, 3, 1), 0.75, np.float32)}
    fig = plots.image_rows(rows, title="t")
    try:
        assert len(fig.axes) == 1
        (image,) = fig.axes[0].get_images()
        np.testing.assert_array_equal(image.get_array(), plots.image_mosaic(list(rows.values()), 4))
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["input", "reconstruction"]
        np.testing.assert_allclose(fig.axes[0].get_yticks(), [1.0, 5.0])  # the middle row of each 3-pixel tile
    finally:
        plots.plt.close(fig)


def test_image_rows_of_vectors_are_line_plots():
    fig = plots.image_rows({"a": np.zeros((3, 5)), "b": np.ones((2, 5))})
    try:
        assert len(fig.axes) == 6
        assert len(fig.axes[0].get_lines()) == 1 and not fig.axes[5].axison  # b has no third vector
    finally:
        plots.plt.close(fig)


@pytest.mark.parametrize("steps", [3, 9])
def test_traversal_figure_has_a_row_per_dimension(steps):
    grid = np.random.default_rng(1).uniform(size=(4, steps, 5, 5, 1)).astype(np.float32)
    fig = plots.traversals(grid, np.linspace(-3, 3, steps), [7, 2, 0, 5])
    try:
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["z[7]", "z[2]", "z[0]", "z[5]"]
        assert fig.axes[0].get_images()[0].get_array().shape == (4 * 6 - 1, steps * 6 - 1, 3)
        assert fig._suptitle.get_text().endswith("dims 7, 2, 0, 5; the other dims at the first example's posterior mean")
    finally:
        plots.plt.close(fig)
    # rows ordered by KL (model_figures): the title says by what, and out of how many dims
    fig = plots.traversals(grid, np.linspace(-3, 3, steps), [7, 2, 0, 5], by_kl=True, of=16)
    try:
        assert "\nthe 4 dims of largest KL of 16, largest first; the other dims at" in fig._suptitle.get_text()
    finally:
        plots.plt.close(fig)
    fig = plots.traversals(grid, np.linspace(-3, 3, steps), [7, 2, 0, 5], by_kl=True, of=4)
    try:
        assert "\nall 4 dims, by KL, largest first; the other dims at" in fig._suptitle.get_text()
    finally:
        plots.plt.close(fig)


# --- text tables: Markdown that renders as the sentences --------------------------------------------


class _Cells(HTMLParser):
    """The text of each table cell of rendered HTML, and any tag found inside a cell."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells, self.inner_tags, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th"):
            self._cell = ""
        elif self._cell is not None:
            self.inner_tags.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


# Sentences a user's corpus holds (code, emphasis, HTML-like tokens, table pipes, links, entities).
AWKWARD = ["the ` ` ` quote", "__init__ and *args* and **kwargs**", "x <unk> y </td>", "a | b || c", "back\\slash \\*",
           "[link](http://x) ![img](y)", "~~strike~~ ~one~", "&amp; &lt; & ;", "1. # not a heading", "<b>bold</b>"]


def test_text_tables_render_as_the_sentences_written():
    """Decoded sentences went into the Markdown tables as they were: a CommonMark renderer with
    GitHub's tables (what MLflow's artefact view uses) turned backquotes into code, asterisks and
    underscores into emphasis, and hid `<unk>` as an unknown HTML tag."""
    from markdown_it import MarkdownIt

    from vae_tf.plots import _markdown_table, markdown_text

    renderer = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    table = _markdown_table(["input", "decoded"], [[s, s[::-1]] for s in AWKWARD] + [["", "two\nlines"]])
    cells = _Cells()
    cells.feed(renderer.render(table))
    assert cells.inner_tags == []  # no <code>, <em>, <strong>, <a>, <img>, <s>, ...
    expected = ["input", "decoded"] + [c for s in AWKWARD for c in (s, s[::-1])] + ["∅", "two lines"]
    assert cells.cells == expected
    for sentence in AWKWARD:  # outside a table: the interpolation's from/to lines
        paragraph = renderer.render(f"from: {markdown_text(sentence)}")
        assert paragraph.startswith("<p>") and paragraph.count("<") == 2, paragraph
        assert html.unescape(paragraph[3:-5]) == f"from: {sentence}"
