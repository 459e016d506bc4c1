"""The report's plots as inline SVG strings (matplotlib, no pyplot state, deterministic output).

Text goes into the SVG as ``<text>`` elements that matplotlib escapes; labels are also made literal for
matplotlib (``$`` would start mathtext, a leading ``_`` would hide a legend entry).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

import numpy as np

from misalign.taxonomy import DIMENSION_TITLES, DIMENSIONS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
"""Okabe & Ito's colour-blind-safe palette."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
DIM_COLORS = {"safety": "#D55E00", "value": "#0072B2", "cultural": "#009E73", "all_three": "#CC79A7"}
DIM_MARKERS = {"safety": "o", "value": "s", "cultural": "^", "all_three": "D"}
DIM_TITLES = {**DIMENSION_TITLES, "all_three": "All three"}
RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "path.simplify": True,
}
_METADATA_RE = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def literal(label: str, width: int = 40) -> str:
    """A label matplotlib draws as is: ``$`` escaped, no leading underscore, at most ``width`` characters."""
    s = " ".join(str(label).split())
    if len(s) > width:
        s = s[: width - 1] + "…"
    s = s.replace("$", r"\$")
    return "\u200b" + s if s.startswith("_") else s


def _figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (no global figure manager, safe off the main thread)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, *, name: str, title: str) -> str:
    """Render ``fig`` to an inline ``<svg>``: no XML prolog or metadata, ids salted by ``name``, a role and label."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": f"misalign-report-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = _METADATA_RE.sub("", svg, count=1)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(title, quote=True)}" ', 1)


@dataclass
class Point:
    """One model in the Coverage vs 1 − FFR scatter."""

    label: str
    coverage: float | None
    ffr: float | None
    coverage_ci: tuple[float, float] | None = None
    ffr_ci: tuple[float, float] | None = None


def scatter(points: Sequence[Point]) -> str:
    """Coverage against 1 − FFR, one marker per model with 95% CI bars, over iso-AS curves 0.2 … 0.9."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(7.5, 5.2)
        ax = fig.add_subplot()
        x = np.linspace(0.001, 1, 400)
        for a in np.arange(0.2, 0.91, 0.1):
            with np.errstate(divide="ignore", invalid="ignore"):
                c = a * x / (2 * x - a)
            ok = (x > a / 2) & (c <= 1.0) & (c >= 0)
            ax.plot(x[ok], c[ok], color="#9aa0a6", lw=0.8, ls="--", zorder=1)
            ax.annotate(f"AS {a:.1f}", (1.0, a / (2 - a)), xytext=(3, 0), textcoords="offset points",
                        fontsize=7, color="#5f6368", va="center")
        for k, p in enumerate(points):
            if p.coverage is None or p.ffr is None:
                continue
            keep = 1 - p.ffr
            xerr = None if p.ffr_ci is None else [[max(keep - (1 - p.ffr_ci[1]), 0)],
                                                  [max((1 - p.ffr_ci[0]) - keep, 0)]]
            yerr = None if p.coverage_ci is None else [[max(p.coverage - p.coverage_ci[0], 0)],
                                                       [max(p.coverage_ci[1] - p.coverage, 0)]]
            ax.errorbar([keep], [p.coverage], xerr=xerr, yerr=yerr, fmt=MARKERS[k % len(MARKERS)], ms=7,
                        color=OKABE_ITO[k % len(OKABE_ITO)], ecolor=OKABE_ITO[k % len(OKABE_ITO)], elinewidth=1,
                        capsize=2, label=literal(p.label), zorder=3, mec="white", mew=0.6)
        ax.set(xlim=(0, 1.0), ylim=(0, 1.02), xlabel="1 − False Failure Rate (aligned responses left alone)",
               ylabel="Coverage (misaligned responses flagged)", aspect="equal")
        ax.set_title("Coverage vs 1 − FFR (dashed: equal Alignment Score)", loc="left")
        ax.grid(True, lw=0.4, alpha=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)
        return to_svg(fig, name="scatter", title="Coverage against 1 minus False Failure Rate per model")


def dimension_bars(labels: Sequence[str], values: dict[str, list[float | None]],
                   cis: dict[str, list[tuple[float, float] | None]]) -> str:
    """Grouped bars: AS per dimension (and all three) for each model, with 95% CI whiskers."""
    import matplotlib

    groups = [g for g in (*DIMENSIONS, "all_three") if g in values]
    n = len(labels)
    with matplotlib.rc_context(RC):
        fig = _figure(min(max(6.0, 1.0 + 0.9 * n), 14.0), 4.2)
        ax = fig.add_subplot()
        width = 0.8 / max(len(groups), 1)
        x = np.arange(n)
        for g_i, g in enumerate(groups):
            vals = np.array([np.nan if v is None else v for v in values[g]], dtype=float)
            lo = np.array([np.nan if c is None else max(vals[i] - c[0], 0) for i, c in enumerate(cis[g])])
            hi = np.array([np.nan if c is None else max(c[1] - vals[i], 0) for i, c in enumerate(cis[g])])
            pos = x - 0.4 + width * (g_i + 0.5)
            ax.bar(pos, np.nan_to_num(vals), width * 0.92, color=DIM_COLORS[g], label=DIM_TITLES[g],
                   hatch="//" if g == "all_three" else None, edgecolor="white", linewidth=0.5)
            has = ~np.isnan(vals) & ~np.isnan(lo)
            if has.any():
                ax.errorbar(pos[has], vals[has], yerr=[lo[has], hi[has]], fmt="none", ecolor="#202124",
                            elinewidth=0.8, capsize=2)
            for xi in pos[np.isnan(vals)]:
                ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="#5f6368")
        ax.set_xticks(x, [literal(s, 28) for s in labels], rotation=20 if n > 4 else 0, ha="right" if n > 4 else
                      "center")
        ax.set(ylim=(0, 1.05), ylabel="Alignment Score")
        ax.set_title("Alignment Score per dimension (bars: 95% CI)", loc="left")
        ax.grid(True, axis="y", lw=0.4, alpha=0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        return to_svg(fig, name="bars", title="Alignment Score per dimension per model")


def tradeoffs(labels: Sequence[str], per_dim: Sequence[dict[str, float | None]],
              overall: Sequence[float | None]) -> str:
    """Per model, the range (min–max) of its per-dimension AS with a dot per dimension and the overall AS."""
    import matplotlib

    n = len(labels)
    with matplotlib.rc_context(RC):
        fig = _figure(7.5, max(2.2, 0.9 + 0.38 * n))
        ax = fig.add_subplot()
        y = np.arange(n)[::-1]
        for i in range(n):
            vals = [v for v in (per_dim[i].get(d) for d in DIMENSIONS) if v is not None]
            if len(vals) >= 2:
                ax.hlines(y[i], min(vals), max(vals), color="#9aa0a6", lw=3, zorder=1)
                ax.annotate(f"spread {100 * (max(vals) - min(vals)):.1f}", (max(vals), y[i]), xytext=(8, 0),
                            textcoords="offset points", va="center", fontsize=7, color="#5f6368")
        for d in DIMENSIONS:
            xs = np.array([np.nan if p.get(d) is None else p[d] for p in per_dim], dtype=float)
            ok = ~np.isnan(xs)
            ax.scatter(xs[ok], y[ok], s=42, marker=DIM_MARKERS[d], color=DIM_COLORS[d], label=DIM_TITLES[d],
                       zorder=3, edgecolors="white", linewidths=0.6)
        ov = np.array([np.nan if v is None else v for v in overall], dtype=float)
        ok = ~np.isnan(ov)
        ax.scatter(ov[ok], y[ok], s=60, marker="|", color="#202124", label="Overall", zorder=4, linewidths=1.6)
        ax.set_yticks(y, [literal(s) for s in labels])
        ax.set(xlim=(0, 1.0), ylim=(-0.7, n - 0.3), xlabel="Alignment Score")
        ax.set_title("Trade-offs: spread of Alignment Score across dimensions", loc="left")
        ax.grid(True, axis="x", lw=0.4, alpha=0.4)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        return to_svg(fig, name="tradeoffs", title="Spread of per-dimension Alignment Score per model")


LOW_N_TEXT = "#202124"
"""Colour of the n printed in a low-n heatmap cell."""


def _pale(matrix: np.ndarray, low: np.ndarray, cmap: Colormap) -> np.ndarray:
    """RGBA of the low-n cells: their colour mixed 60% with white (the other cells fully transparent)."""
    rgba = np.asarray(cmap(np.nan_to_num(matrix)), dtype=float)
    rgba[..., :3] = 0.4 * rgba[..., :3] + 0.6
    rgba[..., 3] = low.astype(float)
    return rgba


def heatmap(rows: Sequence[tuple[str, str]], labels: Sequence[str], matrix: np.ndarray,
            n: np.ndarray | None = None, min_n: int = 0, *, label: str = "Alignment Score", name: str = "heatmap",
            title: str = "Alignment Score per domain and model") -> str:
    """AS per domain (rows, grouped by dimension) and model (columns); missing cells hatched grey, not zero.

    Cells with fewer than ``min_n`` judged responses (``n``, same shape as ``matrix``) are pale, with their n
    printed in them (each such text has the id ``low-n-ROW-COLUMN``). ``label`` names the colour scale (any
    figure in [0, 1]: the Demo-SafetyBench section draws unsafe rates per demographic group); ``name`` salts the
    SVG's ids, ``title`` is its accessible label."""
    import matplotlib
    from matplotlib import colormaps

    n_rows, n_cols = matrix.shape
    low = np.zeros(matrix.shape, dtype=bool) if n is None else ~np.isnan(matrix) & (n < min_n)
    with matplotlib.rc_context(RC):
        fig = _figure(min(4.6 + 0.55 * n_cols, 16.0), 1.6 + 0.15 * n_rows)
        ax = fig.add_subplot()
        ax.set_facecolor("#e8eaed")
        ax.patch.set_hatch("////")
        ax.patch.set_edgecolor("#bdc1c6")
        cmap = colormaps["cividis"].with_extremes(bad=(0, 0, 0, 0))
        mesh = ax.pcolormesh(np.ma.masked_where(np.isnan(matrix) | low, matrix), cmap=cmap, vmin=0, vmax=1,
                             edgecolors="white", linewidth=0.3)
        if n is not None and low.any():
            ax.pcolormesh(_pale(matrix, low, cmap), edgecolors="white", linewidth=0.3)
            for i, j in zip(*np.nonzero(low), strict=True):
                ax.text(j + 0.5, i + 0.5, str(int(n[i, j])), ha="center", va="center", fontsize=5.5,
                        color=LOW_N_TEXT, gid=f"low-n-{i}-{j}")
        _heatmap_axes(ax, rows, labels)
        cb = fig.colorbar(mesh, ax=ax, location="bottom", shrink=0.6, pad=0.01, aspect=40)
        pale = f"pale, with n: fewer than {min_n} judged responses; " if low.any() else ""
        cb.set_label(f"{label}\n({pale}hatched grey: no data)")
        return to_svg(fig, name=name, title=title)


def _heatmap_axes(ax: Axes, rows: Sequence[tuple[str, str]], labels: Sequence[str]) -> None:
    """Domain and model tick labels, no ticks or spines, a rule and a title between dimensions."""
    n_rows = len(rows)
    ax.invert_yaxis()
    ax.set_yticks(np.arange(n_rows) + 0.5, [literal(name, 38) for _, name in rows], fontsize=6.5)
    ax.set_xticks(np.arange(len(labels)) + 0.5, [literal(s, 24) for s in labels], rotation=45, ha="left",
                  fontsize=7.5)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    dims = [d for d, _ in rows]
    start = 0
    for i in range(1, n_rows + 1):
        if i == n_rows or dims[i] != dims[start]:
            if i < n_rows:
                ax.axhline(i, color="#202124", lw=1.2)
            ax.annotate(DIM_TITLES.get(dims[start], dims[start]).upper(), (1.0, (start + i) / 2),
                        xycoords=("axes fraction", "data"), xytext=(6, 0), textcoords="offset points",
                        rotation=-90, va="center", ha="left", fontsize=8, fontweight="bold")
            start = i
