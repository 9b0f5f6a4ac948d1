"""The three networks: Meta-QSM (WP-Conv U-Net), Mesa-QSM (same U-Net, plain convolutions) and
QSMInvNet (gated-convolution encoder–decoder with a non-local block).

Every model maps a local field (ppm) of shape (N, 1, X, Y, Z) — plus, for QSMInvNet, the brain
mask — to χ (ppm) of the same shape; X, Y, Z must be multiples of :attr:`MULTIPLE` (16, four
2× poolings; :mod:`qsmflow.nn.inference` pads and crops). Inputs are multiplied by
``field_scale`` and outputs divided by ``chi_scale`` internally so the trainable layers see values
of order 1. B0 is assumed along array axis 2 (the training convention).

Meta-QSM layer count (paper Fig. 2): 6 WP-Conv (3³, dilation 1), 3 WP-Conv (dilation 2),
4 max-pools, 4 transposed convolutions, 9 batch norms (one after each of the 9 WP-Convs),
4 skip concatenations and a final linear WP-Conv:

    enc0 d1 ─────────────────────────────────────────────── cat → final WP-Conv (linear)
      pool → enc1 d1 ──────────────────────────── cat → dec1 d1 ↑
        pool → enc2 d1 ─────────────── cat → dec2 d1 ↑
          pool → enc3 d2 ── cat → dec3 d1 ↑
            pool → bott d2 → bott d2 ↑ (transposed conv)

QSMInvNet has the same skeleton with gated convolutions, a non-local block after the bottleneck,
3³ stride-2 transposed convolutions and a fifth concatenation (field and mask re-joined before the
last convolution).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import GatedConv3d, NonLocalBlock3d, PlainConv3d, WPConv3d

#: spatial sizes must be a multiple of this (4 poolings)
MULTIPLE = 16


class _ConvBNReLU(nn.Module):
    def __init__(self, conv_cls, in_ch, out_ch, dilation, **kw):
        super().__init__()
        self.conv = conv_cls(in_ch, out_ch, 3, dilation=dilation, **kw)
        self.bn = nn.BatchNorm3d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x, vs):
        return self.act(self.bn(self.conv(x, vs)))


class QSMUNet(nn.Module):
    """Meta-QSM (``wp=True``) or Mesa-QSM (``wp=False``) U-Net; ``forward(field, voxel_size)``.

    ``width``: channels at full resolution (doubling per level, capped at 8×); ``hidden`` and
    ``n_basis``: WP-Conv hypernetwork width and number of basis kernels.
    """

    def __init__(self, width: int = 16, wp: bool = True, hidden: int = 32, n_basis: int = 4,
                 in_ch: int = 1, field_scale: float = 10.0, chi_scale: float = 10.0):
        super().__init__()
        self.wp = bool(wp)
        conv = WPConv3d if wp else PlainConv3d
        kw = {"hidden": hidden, "n_basis": n_basis} if wp else {}
        c = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.field_scale, self.chi_scale = float(field_scale), float(chi_scale)
        self.enc = nn.ModuleList([
            _ConvBNReLU(conv, in_ch, c[0], 1, **kw),
            _ConvBNReLU(conv, c[0], c[1], 1, **kw),
            _ConvBNReLU(conv, c[1], c[2], 1, **kw),
            _ConvBNReLU(conv, c[2], c[3], 2, **kw),
        ])
        self.pool = nn.MaxPool3d(2)
        self.bott = nn.ModuleList([
            _ConvBNReLU(conv, c[3], c[4], 2, **kw),
            _ConvBNReLU(conv, c[4], c[4], 2, **kw),
        ])
        self.up = nn.ModuleList([
            nn.ConvTranspose3d(c[4], c[3], 2, stride=2),
            nn.ConvTranspose3d(c[3], c[2], 2, stride=2),
            nn.ConvTranspose3d(c[2], c[1], 2, stride=2),
            nn.ConvTranspose3d(c[1], c[0], 2, stride=2),
        ])
        self.dec = nn.ModuleList([
            _ConvBNReLU(conv, 2 * c[3], c[3], 1, **kw),
            _ConvBNReLU(conv, 2 * c[2], c[2], 1, **kw),
            _ConvBNReLU(conv, 2 * c[1], c[1], 1, **kw),
        ])
        self.final = conv(2 * c[0], 1, 3, dilation=1, **kw)
        self.act = nn.ReLU(inplace=True)

    def forward(self, field: torch.Tensor, voxel_size) -> torch.Tensor:
        """χ from the local field.

        Parameters
        ----------
        field : torch.Tensor, shape (N, in_ch, X, Y, Z)
            Local field (ppm); X, Y, Z multiples of :data:`MULTIPLE`.
        voxel_size : sequence of 3 float or torch.Tensor
            Voxel size (mm) per array axis, shared by the batch (ignored by Mesa-QSM).

        Returns
        -------
        torch.Tensor, shape (N, 1, X, Y, Z)
            Susceptibility chi (ppm), not masked.
        """
        x = field * self.field_scale
        skips = []
        for blk in self.enc:
            x = blk(x, voxel_size)
            skips.append(x)
            x = self.pool(x)
        for blk in self.bott:
            x = blk(x, voxel_size)
        for i, up in enumerate(self.up):
            x = torch.cat([self.act(up(x)), skips[3 - i]], dim=1)
            if i < 3:
                x = self.dec[i](x, voxel_size)
        return self.final(x, voxel_size) / self.chi_scale


class _GatedNorm(nn.Module):
    def __init__(self, in_ch, out_ch, dilation):
        super().__init__()
        self.conv = GatedConv3d(in_ch, out_ch, 3, dilation=dilation)
        self.bn = nn.BatchNorm3d(out_ch)

    def forward(self, x):
        return self.bn(self.conv(x))


class QSMInvNet(nn.Module):
    """QSMInvNet: ``forward(field, mask)`` (both (N, 1, X, Y, Z)); voxel size is not an input."""

    def __init__(self, width: int = 16, field_scale: float = 10.0, chi_scale: float = 10.0,
                 nonlocal_block: bool = True):
        super().__init__()
        c = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.field_scale, self.chi_scale = float(field_scale), float(chi_scale)
        self.enc = nn.ModuleList([
            _GatedNorm(2, c[0], 1), _GatedNorm(c[0], c[1], 1),
            _GatedNorm(c[1], c[2], 1), _GatedNorm(c[2], c[3], 2),
        ])
        self.pool = nn.MaxPool3d(2)
        self.bott = nn.ModuleList([_GatedNorm(c[3], c[4], 2), _GatedNorm(c[4], c[4], 2)])
        self.nonlocal_block = NonLocalBlock3d(c[4]) if nonlocal_block else nn.Identity()
        self.up = nn.ModuleList([
            nn.ConvTranspose3d(a, b, 3, stride=2, padding=1, output_padding=1)
            for a, b in ((c[4], c[3]), (c[3], c[2]), (c[2], c[1]), (c[1], c[0]))
        ])
        self.dec = nn.ModuleList([
            _GatedNorm(2 * c[3], c[3], 1), _GatedNorm(2 * c[2], c[2], 1),
            _GatedNorm(2 * c[1], c[1], 1),
        ])
        self.final = nn.Conv3d(2 * c[0] + 2, 1, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, field: torch.Tensor, mask: torch.Tensor, voxel_size=None) -> torch.Tensor:
        """χ from the local field and the brain mask.

        Parameters
        ----------
        field : torch.Tensor, shape (N, 1, X, Y, Z)
            Local field (ppm); X, Y, Z multiples of :data:`MULTIPLE`.
        mask : torch.Tensor, shape (N, 1, X, Y, Z)
            Brain mask (float 0/1); the field is multiplied by it.
        voxel_size : optional
            Ignored.

        Returns
        -------
        torch.Tensor, shape (N, 1, X, Y, Z)
            Susceptibility chi (ppm), not masked.
        """
        inp = torch.cat([field * self.field_scale * mask, mask], dim=1)
        x, skips = inp, []
        for blk in self.enc:
            x = blk(x)
            skips.append(x)
            x = self.pool(x)
        for blk in self.bott:
            x = blk(x)
        x = self.nonlocal_block(x)
        for i, up in enumerate(self.up):
            x = torch.cat([self.act(up(x)), skips[3 - i]], dim=1)
            if i < 3:
                x = self.dec[i](x)
        return self.final(torch.cat([x, inp], dim=1)) / self.chi_scale


#: model kinds accepted in configs
KINDS = ("metaqsm", "mesaqsm", "qsminvnet")


def build_model(kind: str, **arch) -> nn.Module:
    """Build a model from its config ``[model]`` table: ``kind`` plus architecture keywords.

    Parameters
    ----------
    kind : {"metaqsm", "mesaqsm", "qsminvnet"}
        Model kind (:data:`KINDS`).
    **arch
        Keywords of :class:`QSMUNet` (``width``, ``hidden``, ``n_basis``, ``in_ch``, ``field_scale``,
        ``chi_scale``; ``hidden`` and ``n_basis`` are dropped for "mesaqsm") or of :class:`QSMInvNet`
        (``width``, ``field_scale``, ``chi_scale``, ``nonlocal_block``).

    Returns
    -------
    torch.nn.Module
        A freshly initialised :class:`QSMUNet` (WP-Conv for "metaqsm", plain for "mesaqsm") or
        :class:`QSMInvNet`.

    Raises
    ------
    ValueError
        If ``kind`` is unknown.
    """
    if kind == "metaqsm":
        return QSMUNet(wp=True, **arch)
    if kind == "mesaqsm":
        arch = {k: v for k, v in arch.items() if k not in ("hidden", "n_basis")}
        return QSMUNet(wp=False, **arch)
    if kind == "qsminvnet":
        return QSMInvNet(**arch)
    raise ValueError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")


def run_model(model: nn.Module, field: torch.Tensor, mask: torch.Tensor, voxel_size) -> torch.Tensor:
    """Call any of the models with the inputs it needs; output masked χ (ppm).

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`QSMUNet` or :class:`QSMInvNet`.
    field : torch.Tensor, shape (N, 1, X, Y, Z)
        Local field (ppm); X, Y, Z multiples of :data:`MULTIPLE`.
    mask : torch.Tensor, shape (N, 1, X, Y, Z)
        Brain mask (float 0/1); the field is multiplied by it before the call.
    voxel_size : sequence of 3 float
        Voxel size (mm) per array axis (not passed to QSMInvNet).

    Returns
    -------
    torch.Tensor, shape (N, 1, X, Y, Z)
        Susceptibility chi (ppm), 0 outside ``mask``.
    """
    field = field * mask
    if isinstance(model, QSMInvNet):
        out = model(field, mask)
    else:
        out = model(field, voxel_size)
    return out * mask


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    int
        Total number of elements of the parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
