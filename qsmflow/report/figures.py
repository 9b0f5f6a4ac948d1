"""Mosaic figures of one acquisition (PNG, matplotlib Agg): axial slices over the brain at
native resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def slice_centre(mask) -> tuple[int, int, int]:
    """Voxel index of the mask's centre of mass (array centre for an empty mask)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return tuple(s // 2 for s in m.shape)
    return tuple(int(round(c.mean())) for c in np.nonzero(m))


#: slices per mosaic (evenly spread over the brain mask along the slice axis) and columns
N_SLICES, N_COLS = 12, 6
#: a tile is drawn at an integer number of screen pixels per voxel, at least 1 (native
#: resolution: streaks and wraps stay visible), about this many pixels wide
TILE_PX = 160
_TITLE_PX, _BAR_PX, _GAP = 22, 70, 2


def mosaic_slices(mask, n=N_SLICES, axis=2) -> list[int]:
    """``n`` slice indices along ``axis`` evenly spread inside the mask's extent (the whole
    volume for an empty mask), without the outermost slices."""
    m = np.asarray(mask, bool)
    idx = np.nonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, m.shape[axis] - 1)
    picks = np.round(np.linspace(lo, hi, n + 2)[1:-1]).astype(int)
    return sorted(set(int(k) for k in picks))


def pixel_scale(voxel_size, n_horizontal, axis=2) -> tuple[int, int]:
    """Screen pixels per voxel (horizontal, vertical) of a tile cut across ``axis``: an integer
    ≥ 1 horizontally, the vertical one keeping the voxels' aspect."""
    h, v = [float(voxel_size[a]) for a in range(3) if a != axis]
    sh = max(1, int(round(TILE_PX / max(int(n_horizontal), 1))))
    return sh, max(1, int(round(sh * v / h)))


def mosaic(vol, slices, voxel_size, *, axis=2, ncols=N_COLS, fill=np.nan) -> np.ndarray:
    """The slices ``slices`` of ``vol`` across ``axis`` as one 2D image (rows of ``ncols``
    tiles, ``fill`` between them), each tile at :func:`pixel_scale` pixels per voxel, the
    first remaining array axis horizontal and the second pointing up (for ``imshow`` with the
    default origin)."""
    vol = np.asarray(vol, float)
    tiles = [np.take(vol, k, axis=axis).T[::-1] for k in slices]
    sh, sv = pixel_scale(voxel_size, tiles[0].shape[1], axis)
    tiles = [np.repeat(np.repeat(t, sv, axis=0), sh, axis=1) for t in tiles]
    th, tw = tiles[0].shape
    ncols = min(ncols, len(tiles))
    nrows = -(-len(tiles) // ncols)
    out = np.full((nrows * (th + _GAP) - _GAP, ncols * (tw + _GAP) - _GAP), fill)
    for n, t in enumerate(tiles):
        r, c = divmod(n, ncols)
        out[r * (th + _GAP):r * (th + _GAP) + th, c * (tw + _GAP):c * (tw + _GAP) + tw] = t
    return out


def _panels_figure(path, panels, *, dpi=100):
    """Write one PNG of stacked panels, each ``(title, 2D image, imshow kwargs, colour-bar label
    or None, contour image or None)``, every image pixel one screen pixel."""
    plt = _plt()
    width = max(p[1].shape[1] for p in panels) + _BAR_PX
    heights = [p[1].shape[0] + _TITLE_PX for p in panels]
    fig = plt.figure(figsize=(width / dpi, sum(heights) / dpi), dpi=dpi)
    top = sum(heights)
    for (title, img, kw, label, contour), h in zip(panels, heights):
        top -= h
        ih, iw = img.shape
        ax = fig.add_axes([0, top / sum(heights), iw / width, ih / sum(heights)])
        im = ax.imshow(img, interpolation="nearest", aspect="auto", **kw)
        if contour is not None:
            ax.contour(contour, levels=[0.5], colors="tab:orange", linewidths=0.8)
        ax.set_axis_off()
        fig.text(2 / width, (top + ih + 4) / sum(heights), title, fontsize=10, va="bottom")
        if label is not None:
            cax = fig.add_axes([(iw + 8) / width, (top + 0.1 * ih) / sum(heights),
                                12 / width, 0.8 * ih / sum(heights)])
            fig.colorbar(im, cax=cax).set_label(label, fontsize=8)
            cax.tick_params(labelsize=7)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return str(path)


def symmetric_limit(arrays, mask, pct=99.0) -> float:
    """A colour limit ±L covering ``pct`` % of |values| inside the mask over all ``arrays``."""
    m = np.asarray(mask, bool)
    vals = np.concatenate([np.abs(np.asarray(a)[m]).ravel() for a in arrays]) if m.any() else [1.0]
    lim = float(np.percentile(vals, pct)) if len(vals) else 1.0
    return lim if lim > 0 else 1.0


def _upper(vol, mask, pct=99.0) -> float:
    """A colour maximum: the ``pct`` percentile of the positive values inside the mask (all
    positive values for an empty mask), 1 when there are none."""
    v = np.asarray(vol, float)
    sel = v[(mask if mask.any() else np.ones(v.shape, bool)) & (v > 0)]
    return float(np.percentile(sel, pct)) if sel.size else 1.0


def acquisition_figures(outdir, prefix, *, magnitude, mask, total_field, local_field, chi: dict,
                        voxel_size, maps: dict | None = None) -> dict[str, str]:
    """Write the report figures of one acquisition into ``outdir``; returns ``{key: path}``.

    Every figure is a mosaic of :data:`N_SLICES` axial slices (the third array axis) spread over
    the brain mask, at native resolution (an integer number of pixels per voxel).
    ``mask.png``: magnitude with the brain-mask contour; ``field.png``: total and local field
    (Hz); ``chi.png``: every χ map (ppm) on one colour scale; ``maps.png`` (when ``maps`` has
    any of ``r2star`` (1/s), ``swi``, ``swi_minip``): the clinical maps.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(mask) > 0
    sl = mosaic_slices(mask)

    def mos(v, fill=np.nan):
        return mosaic(v, sl, voxel_size, fill=fill)

    out = {}
    mag = np.asarray(magnitude, float) if magnitude is not None else mask.astype(float)
    out["mask"] = _panels_figure(outdir / f"{prefix}_mask.png", [
        ("magnitude + brain mask (orange)", mos(mag),
         dict(cmap="gray", vmin=0, vmax=_upper(mag, mask)), None,
         mosaic(mask.astype(float), sl, voxel_size, fill=0.0))])
    tot = np.asarray(total_field, float) * mask
    loc = np.asarray(local_field, float)
    panels = []
    for title, f in (("total field in the brain mask (Hz)", tot), ("local field (Hz)", loc)):
        lim = symmetric_limit([f], mask)
        panels.append((title, mos(f), dict(cmap="RdBu_r", vmin=-lim, vmax=lim), "Hz", None))
    out["field"] = _panels_figure(outdir / f"{prefix}_field.png", panels)
    lim = symmetric_limit([chi[n] for n in chi], mask)
    out["chi"] = _panels_figure(outdir / f"{prefix}_chi.png", [
        (f"χ {n} (ppm, ±{lim:.2g})", mos(np.asarray(chi[n], float)),
         dict(cmap="gray", vmin=-lim, vmax=lim), "χ (ppm)", None) for n in chi])
    maps = {k: np.asarray(v, float) for k, v in (maps or {}).items() if v is not None}
    panels = []
    if "r2star" in maps:
        panels.append(("R2* (1/s)", mos(maps["r2star"]),
                       dict(cmap="magma", vmin=0, vmax=_upper(maps["r2star"], mask)), "1/s",
                       None))
    for key, title in (("swi", "SWI (CLEAR-SWI-like)"), ("swi_minip", "SWI minIP")):
        if key in maps:
            panels.append((title, mos(maps[key]),
                           dict(cmap="gray", vmin=0, vmax=_upper(maps[key], mask)), None, None))
    if panels:
        out["maps"] = _panels_figure(outdir / f"{prefix}_maps.png", panels)
    return out
