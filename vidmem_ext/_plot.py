"""A few plots drawn with Pillow alone (line charts, heat maps, labelled image grids) for the demo.

Everything is drawn at SUPERSAMPLE times the final size and scaled down, which
smooths lines and text without a plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["line_chart", "heatmap", "bar_chart", "image_rows", "table", "stack", "grid", "titled", "colormap"]

SUPERSAMPLE = 2
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
# Tableau-like qualitative colours for lines.
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
]
# Anchor colours of a viridis-like sequential map (dark purple -> blue -> green -> yellow).
_SEQUENTIAL = [(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
               (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37)]  # fmt: skip


def _font(size: int):
    try:
        return ImageFont.load_default(size=size * SUPERSAMPLE)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def colormap(value: float) -> tuple[int, int, int]:
    """Colour of value in [0, 1] (clipped) on the sequential map."""
    value = min(max(float(value), 0.0), 1.0) * (len(_SEQUENTIAL) - 1)
    i = min(int(value), len(_SEQUENTIAL) - 2)
    t = value - i
    a, b = _SEQUENTIAL[i], _SEQUENTIAL[i + 1]
    return tuple(round(a[c] + t * (b[c] - a[c])) for c in range(3))


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.0e}"


class _Canvas:
    """An RGB image at SUPERSAMPLE scale whose drawing methods take final-size coordinates."""

    def __init__(self, width: int, height: int):
        self.size = (width, height)
        self.image = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, *points):
        return [round(p * SUPERSAMPLE) for p in points]

    def line(self, points, fill, width=1.0):
        flat = [c for p in points for c in self._xy(*p)]
        self.draw.line(flat, fill=fill, width=max(1, round(width * SUPERSAMPLE)), joint="curve")

    def rectangle(self, box, fill=None, outline=None, width=1.0):
        self.draw.rectangle(self._xy(*box), fill=fill, outline=outline, width=max(1, round(width * SUPERSAMPLE)))

    def circle(self, center, radius, fill):
        x, y = center
        self.draw.ellipse(self._xy(x - radius, y - radius, x + radius, y + radius), fill=fill)

    def text(self, xy, text, size=12, anchor="la", fill=INK, angle=0):
        font = _font(size)
        if angle == 0:
            self.draw.text(self._xy(*xy), text, font=font, fill=fill, anchor=anchor)
            return
        # rotated text: draw on its own transparent tile, rotate, paste centred at xy
        left, top, right, bottom = self.draw.textbbox((0, 0), text, font=font, anchor="lt")
        tile = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
        ImageDraw.Draw(tile).text((2, 2), text, font=font, fill=fill, anchor="lt")
        tile = tile.rotate(angle, expand=True)
        x, y = self._xy(*xy)
        self.image.paste(tile, (x - tile.width // 2, y - tile.height // 2), tile)

    def paste(self, image: Image.Image, box):
        left, top, right, bottom = self._xy(*box)
        self.image.paste(image.resize((right - left, bottom - top), Image.NEAREST), (left, top))

    def finish(self) -> Image.Image:
        return self.image.resize(self.size, Image.LANCZOS)


def _axes(canvas, box, xlim, ylim, xticks, yticks, title, xlabel, ylabel, grid=True):
    """Frame, ticks, grid, labels and title around plot area `box`; returns data -> pixel mappers."""
    left, top, right, bottom = box
    to_x = lambda v: left + (v - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)  # noqa: E731
    to_y = lambda v: bottom - (v - ylim[0]) / (ylim[1] - ylim[0]) * (bottom - top)  # noqa: E731
    for v in xticks:
        if grid:
            canvas.line([(to_x(v), top), (to_x(v), bottom)], GRID)
        canvas.line([(to_x(v), bottom), (to_x(v), bottom + 4)], INK)
        canvas.text((to_x(v), bottom + 6), _fmt(v), size=11, anchor="mt")
    for v in yticks:
        if grid:
            canvas.line([(left, to_y(v)), (right, to_y(v))], GRID)
        canvas.line([(left - 4, to_y(v)), (left, to_y(v))], INK)
        canvas.text((left - 7, to_y(v)), _fmt(v), size=11, anchor="rm")
    canvas.rectangle(box, outline=INK)
    canvas.text(((left + right) / 2, top - 10), title, size=13, anchor="md")
    canvas.text(((left + right) / 2, bottom + 24), xlabel, size=12, anchor="mt")
    canvas.text((left - 42, (top + bottom) / 2), ylabel, size=12, angle=90)
    return to_x, to_y


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    legend_title: str = "",
    size: tuple[int, int] = (460, 320),
) -> Image.Image:
    """Lines with markers, one per (label, xs, ys), and a legend on the right."""
    width, height = size
    legend_width = 90 if any(label for label, _, _ in series) else 0
    box = (60, 30, width - 15 - legend_width, height - 50)
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    xlim = (min(xs_all), max(xs_all))
    ylim = ylim or (min(ys_all), max(ys_all))
    canvas = _Canvas(width, height)
    xticks = _nice_ticks(*xlim, count=min(8, len(set(xs_all))))
    to_x, to_y = _axes(canvas, box, xlim, ylim, xticks, _nice_ticks(*ylim), title, xlabel, ylabel)
    for i, (_, xs, ys) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        points = [(to_x(x), to_y(min(max(y, ylim[0]), ylim[1]))) for x, y in zip(xs, ys)]
        canvas.line(points, colour, width=2)
        for p in points:
            canvas.circle(p, 2.5, colour)
    if legend_width:
        x0, y0 = box[2] + 12, box[1] + 4
        if legend_title:
            canvas.text((x0, y0), legend_title, size=11)
            y0 += 18
        for i, (label, _, _) in enumerate(series):
            colour = PALETTE[i % len(PALETTE)]
            canvas.line([(x0, y0 + 7), (x0 + 18, y0 + 7)], colour, width=2)
            canvas.circle((x0 + 9, y0 + 7), 2.5, colour)
            canvas.text((x0 + 24, y0 + 7), label, size=11, anchor="lm")
            y0 += 18
    return canvas.finish()


def heatmap(
    matrix: Sequence[Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    colorbar_label: str = "",
    size: tuple[int, int] = (330, 275),
) -> Image.Image:
    """A matrix as coloured cells (row 0 at the top), with a colour bar."""
    rows, cols = len(matrix), len(matrix[0])
    width, height = size
    side = min(width - 60 - 75, height - 30 - 50)
    box = (60, 30, 60 + side, 30 + side)
    cells = Image.new("RGB", (cols, rows))
    cells.putdata([colormap((v - vmin) / (vmax - vmin)) for row in matrix for v in row])
    canvas = _Canvas(width, height)
    canvas.paste(cells, box)
    xticks = _nice_ticks(0, cols - 1, count=min(6, cols))
    yticks = _nice_ticks(0, rows - 1, count=min(6, rows))
    # cell centres: index i sits at i + 0.5 of the box's [0, n] range
    _axes(canvas, box, (-0.5, cols - 0.5), (rows - 0.5, -0.5), xticks, yticks, title, xlabel, ylabel, grid=False)
    bar = (box[2] + 14, box[1], box[2] + 28, box[3])
    gradient = Image.new("RGB", (1, 256))
    gradient.putdata([colormap(1 - i / 255) for i in range(256)])
    canvas.paste(gradient, bar)
    canvas.rectangle(bar, outline=INK)
    for v in _nice_ticks(vmin, vmax, count=5):
        y = bar[3] - (v - vmin) / (vmax - vmin) * (bar[3] - bar[1])
        canvas.line([(bar[2], y), (bar[2] + 3, y)], INK)
        canvas.text((bar[2] + 5, y), _fmt(v), size=10, anchor="lm")
    if colorbar_label:
        canvas.text((bar[2] + 38, (bar[1] + bar[3]) / 2), colorbar_label, size=11, angle=90)
    return canvas.finish()


def bar_chart(
    groups: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    *,
    title: str,
    xlabel: str,
    reference: float | None = None,
    width: int = 720,
) -> Image.Image:
    """Horizontal bars: one group per (label, [(series, value), ...]), one colour per series name,
    a legend on top and an optional dashed reference line (e.g. 1.0 = as fast as a clone)."""
    names = list(dict.fromkeys(name for _, bars in groups for name, _ in bars))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    bar_h, gap, label_w = 9, 8, 250
    legend_h = 18 * ((len(names) + 3) // 4)
    top = 36 + legend_h
    height = top + sum(len(bars) * bar_h + gap for _, bars in groups) + 44
    values = [v for _, bars in groups for _, v in bars] + ([reference] if reference else [])
    xmax = max(values + [1e-9]) * 1.08
    if reference:  # a few huge ratios (tiny shapes, slow references) would squash the rest
        xmax = min(xmax, 2.5 * reference)
    box = (label_w, top, width - 20, height - 44)
    canvas = _Canvas(width, height)
    to_x, _ = _axes(canvas, box, (0, xmax), (0, 1), _nice_ticks(0, xmax), [], "", xlabel, "")
    canvas.text((width / 2, 6), title, size=13, anchor="mt")
    for i, name in enumerate(names):
        x0, y0 = 20 + (i % 4) * ((width - 40) / 4), 30 + 18 * (i // 4)
        canvas.rectangle((x0, y0 - 5, x0 + 14, y0 + 5), fill=colours[name])
        canvas.text((x0 + 19, y0), name, size=11, anchor="lm")
    y = top + gap / 2
    for label, bars in groups:
        canvas.text((label_w - 6, y + len(bars) * bar_h / 2), label, size=10, anchor="rm")
        for name, value in bars:
            canvas.rectangle((to_x(0), y, to_x(min(value, xmax)), y + bar_h - 1), fill=colours[name])
            y += bar_h
        y += gap
    if reference:
        x = to_x(reference)
        for y0 in range(int(box[1]), int(box[3]), 8):
            canvas.line([(x, y0), (x, min(y0 + 4, box[3]))], INK)
    return canvas.finish()


def image_rows(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    *,
    scale: int = 3,
    title: str = "",
    column_labels: Sequence[str] = (),
) -> Image.Image:
    """Rows of equally sized images (nearest-neighbour upscaled), each row labelled above it.

    column_labels, if given, head the columns (wrapped onto two lines when they are wider than a tile).
    """
    tile_w, tile_h = (d * scale for d in rows[0][1][0].size)
    cols = max(len(images) for _, images in rows)
    gap, label_h, title_h = 4, 20, 26 if title else 0
    header_h = 30 if column_labels else 0
    width = 10 + cols * (tile_w + gap) + 6
    height = title_h + header_h + len(rows) * (label_h + tile_h + gap) + 6
    canvas = _Canvas(width, height)
    if title:
        canvas.text((width / 2, 8), title, size=13, anchor="mt")
    y = title_h
    for i, label in enumerate(column_labels):
        words = label.split()
        lines = [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2 :])]
        for j, line in enumerate(lines):
            canvas.text((10 + i * (tile_w + gap) + tile_w / 2, y + 2 + 13 * j), line, size=11, anchor="mt")
    y += header_h
    for label, images in rows:
        canvas.text((10, y + 4), label, size=12)
        y += label_h
        for i, image in enumerate(images):
            x = 10 + i * (tile_w + gap)
            canvas.paste(image.convert("RGB"), (x, y, x + tile_w, y + tile_h))
        y += tile_h + gap
    return canvas.finish()


def table(rows: Sequence[Sequence[str]], *, title: str = "", size: int = 12) -> Image.Image:
    """A text table: the first row is the header; the first column left-aligned, the others right-aligned."""
    font = _font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = lambda text: measure.textlength(text, font=font) / SUPERSAMPLE  # noqa: E731
    widths = [max(text_width(row[c]) for row in rows) for c in range(len(rows[0]))]
    pad, line_h, title_h = 14, size + 10, size + 16 if title else 0
    width = round(sum(widths) + pad * (len(widths) - 1) + 20)
    height = round(title_h + line_h * len(rows) + 16)
    canvas = _Canvas(width, max(height, 1))
    if title:
        canvas.text((10, 6), title, size=size + 1)
    y = title_h + 6
    for r, row in enumerate(rows):
        x = 10
        for c, (cell, w) in enumerate(zip(row, widths)):
            canvas.text((x if c == 0 else x + w, y), cell, size=size, anchor="la" if c == 0 else "ra")
            x += w + pad
        if r == 0:
            canvas.line([(10, y + line_h - 4), (width - 10, y + line_h - 4)], INK)
        y += line_h
    return canvas.finish()


def stack(images: Sequence[Image.Image], *, vertical: bool = False, gap: int = 10) -> Image.Image:
    """Images side by side (or one above the other), top/left aligned on white."""
    if vertical:
        size = (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1))
    else:
        size = (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images))
    out = Image.new("RGB", size, BACKGROUND)
    offset = 0
    for image in images:
        out.paste(image, (0, offset) if vertical else (offset, 0))
        offset += (image.height if vertical else image.width) + gap
    return out


def grid(images: Sequence[Image.Image], *, columns: int, gap: int = 10) -> Image.Image:
    """Images in rows of `columns`, top/left aligned on white."""
    rows = [stack(images[i : i + columns], gap=gap) for i in range(0, len(images), columns)]
    return stack(rows, vertical=True, gap=gap)


def titled(image: Image.Image, title: str, size: int = 14) -> Image.Image:
    """`image` with a centred title line above it."""
    header = _Canvas(image.width, size + 14)
    header.text((image.width / 2, 6), title, size=size, anchor="mt")
    return stack([header.finish(), image], vertical=True, gap=0)
