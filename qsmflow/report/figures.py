"""Orthogonal-slice figures of one acquisition (PNG, matplotlib Agg)."""

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


def ortho(vol, centre, voxel_size):
    """The three orthogonal slices through ``centre`` as (2D array, aspect) pairs, displayed
    with the first displayed axis horizontal (transposed, origin lower)."""
    vs = voxel_size
    i, j, k = centre
    return [(vol[:, :, k].T, vs[1] / vs[0]),     # axial: x horizontal, y vertical
            (vol[:, j, :].T, vs[2] / vs[0]),     # coronal: x horizontal, z vertical
            (vol[i, :, :].T, vs[2] / vs[1])]     # sagittal: y horizontal, z vertical


def _row(axes, vol, centre, vs, title, contour=None, **kw):
    im = None
    for ax, (sl, aspect), view in zip(axes, ortho(vol, centre, vs), ("axial", "coronal", "sagittal")):
        im = ax.imshow(sl, origin="lower", aspect=aspect, interpolation="nearest", **kw)
        if contour is not None:
            c = dict(zip(("axial", "coronal", "sagittal"), ortho(contour.astype(float), centre, vs)))
            ax.contour(c[view][0], levels=[0.5], colors="tab:orange", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(title, fontsize=9)
    return im


def symmetric_limit(arrays, mask, pct=99.0) -> float:
    """A colour limit ±L covering ``pct`` % of |values| inside the mask over all ``arrays``."""
    m = np.asarray(mask, bool)
    vals = np.concatenate([np.abs(np.asarray(a)[m]).ravel() for a in arrays]) if m.any() else [1.0]
    lim = float(np.percentile(vals, pct)) if len(vals) else 1.0
    return lim if lim > 0 else 1.0


def acquisition_figures(outdir, prefix, *, magnitude, mask, total_field, local_field, chi: dict,
                        voxel_size) -> dict[str, str]:
    """Write the report figures of one acquisition into ``outdir``; returns ``{key: path}``.

    ``mask.png``: magnitude with the brain-mask contour; ``field.png``: total and local field
    (Hz); ``chi.png``: every χ map (ppm) side by side on one colour scale.
    """
    plt = _plt()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    mask = np.asarray(mask) > 0
    c = slice_centre(mask)
    out = {}

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), squeeze=False)
    mag = np.asarray(magnitude, float) if magnitude is not None else mask.astype(float)
    hi = float(np.percentile(mag[mag > 0], 99)) if np.any(mag > 0) else 1.0
    _row(axes[0], mag, c, voxel_size, "magnitude + mask", contour=mask, cmap="gray", vmin=0,
         vmax=hi)
    fig.tight_layout()
    out["mask"] = str(outdir / f"{prefix}_mask.png")
    fig.savefig(out["mask"], dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(9, 6.2), squeeze=False)
    tot = np.asarray(total_field, float)
    lt = symmetric_limit([tot], mask)
    im = _row(axes[0], tot * mask, c, voxel_size, "total field (Hz)", cmap="RdBu_r", vmin=-lt,
              vmax=lt)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Hz")
    loc = np.asarray(local_field, float)
    ll = symmetric_limit([loc], mask)
    im = _row(axes[1], loc, c, voxel_size, "local field (Hz)", cmap="RdBu_r", vmin=-ll, vmax=ll)
    fig.colorbar(im, ax=axes[1].tolist(), shrink=0.8, label="Hz")
    out["field"] = str(outdir / f"{prefix}_field.png")
    fig.savefig(out["field"], dpi=80)
    plt.close(fig)

    names = list(chi)
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3.1 * len(names)), squeeze=False)
    lim = symmetric_limit([chi[n] for n in names], mask)
    for row, n in zip(axes, names):
        im = _row(row, np.asarray(chi[n], float), c, voxel_size, f"χ {n} (ppm)", cmap="gray",
                  vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="χ (ppm)")
    out["chi"] = str(outdir / f"{prefix}_chi.png")
    fig.savefig(out["chi"], dpi=80)
    plt.close(fig)
    return out
