"""Network building blocks: the weight-predict convolution (WP-Conv), gated convolution and a
non-local block.

WP-Conv (Meta-QSM)
------------------
A small fully connected *hypernetwork* maps the voxel size (dx, dy, dz in mm, normalised as
``log(v / 1 mm)``) to the layer's 3D kernel ``(outC, inC, k, k, k)`` and bias ``(outC)``; the
convolution then runs with that kernel exactly like ``nn.Conv3d``.

Parameter budget. The paper's hypernetwork ends in an FC layer that emits the whole kernel: with
hidden width ``h`` that last layer holds ``h · inC·k³·outC`` weights, i.e. ``h`` times a plain
convolution (paper-size U-Net of width 32, h = 64 → ≈ 0.6 G parameters, 2.4 GB per checkpoint). We factor it
instead: the kernel is a voxel-size–modulated mix of ``R`` learned *basis kernels*,

    W(v)[o] = Σ_r a_r(v)[o] · B_r[o]        (B_r: (outC, inC, k, k, k), r = 1 … R)
    b(v)    = c(v)

where the hypernetwork ``3 → h → h → R·outC + outC`` emits per-output-channel mixing coefficients
``a`` and the bias ``c``. Cost: ``R`` × a plain convolution plus ``h·(R+1)·outC`` — for R = 4
about 4× a Mesa-QSM (plain) layer instead of h = 16…64×. The shipped reduced Meta-QSM (width 8)
is ≈ 2.4 M parameters (≈ 10 MB) and all five shipped checkpoints together ≈ 28 MB (≤ 50 MB
budget); a naive width-8, h = 16 hypernetwork would already need ≈ 9.4 M parameters (38 MB) for
Meta-QSM alone. Any kernel the naive layer could express
within the span of the bases is reachable, and per-channel coefficients let every output channel
move independently with voxel size. ``a`` is initialised near 1/R·(1, …, 1) so a fresh WP-Conv
starts as an ordinary convolution with kernel mean(B_r).

At inference (module in ``eval()`` mode and no gradient needed) the kernel for one voxel size is
computed once and cached, so the forward pass costs what a plain convolution costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def normalise_voxel_size(voxel_size, device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel size (mm, 3 values) → hypernetwork input ``log(v / 1 mm)`` as a (3,) tensor.

    Parameters
    ----------
    voxel_size : sequence of 3 float or torch.Tensor
        Voxel size (mm) per array axis.
    device : torch.device or str, optional
        Device of the result.
    dtype : torch.dtype, default torch.float32
        Dtype of the result.

    Returns
    -------
    torch.Tensor, shape (3,)
        ``log(voxel_size / 1 mm)``.

    Raises
    ------
    ValueError
        If ``voxel_size`` does not have 3 positive values.
    """
    v = torch.as_tensor(voxel_size, dtype=dtype, device=device).reshape(-1)
    if v.numel() != 3 or not bool(torch.all(v > 0)):
        raise ValueError(f"voxel_size must be three positive mm values, got {voxel_size!r}")
    return torch.log(v)


class WPConv3d(nn.Module):
    """3D convolution whose kernel and bias are predicted from the voxel size (see module doc).

    ``forward(x, voxel_size)``: ``x`` (N, inC, X, Y, Z); ``voxel_size`` three mm values (tuple,
    array or tensor) shared by the batch. Padding keeps the spatial size ("same").
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1,
                 hidden: int = 32, n_basis: int = 4):
        super().__init__()
        self.in_ch, self.out_ch, self.k = int(in_ch), int(out_ch), int(kernel_size)
        self.dilation, self.n_basis = int(dilation), int(n_basis)
        self.padding = self.dilation * (self.k - 1) // 2
        self.basis = nn.Parameter(torch.empty(self.n_basis, out_ch, in_ch, *(self.k,) * 3))
        fan_in = in_ch * self.k**3
        bound = math.sqrt(6.0 / fan_in)  # He-uniform for the mean kernel
        nn.init.uniform_(self.basis, -bound, bound)
        self.hyper = nn.Sequential(
            nn.Linear(3, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, self.n_basis * out_ch + out_ch),
        )
        last = self.hyper[-1]
        nn.init.normal_(last.weight, std=0.01 / math.sqrt(hidden))
        with torch.no_grad():
            last.bias.zero_()
            last.bias[: self.n_basis * out_ch] = 1.0
        self._cache: tuple | None = None

    def kernel(self, voxel_size) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel (outC, inC, k, k, k) and bias (outC) for ``voxel_size`` (mm).

        Parameters
        ----------
        voxel_size : sequence of 3 float or torch.Tensor
            Voxel size (mm) per array axis.

        Returns
        -------
        weight : torch.Tensor, shape (outC, inC, k, k, k)
        bias : torch.Tensor, shape (outC,)

        Raises
        ------
        ValueError
            If ``voxel_size`` does not have 3 positive values.
        """
        v = normalise_voxel_size(voxel_size, self.basis.device, self.basis.dtype)
        out = self.hyper(v)
        a = out[: self.n_basis * self.out_ch].reshape(self.n_basis, self.out_ch)
        bias = out[self.n_basis * self.out_ch:]
        w = torch.einsum("ro,roikjl->oikjl", a, self.basis) / self.n_basis
        return w, bias

    def _cached_kernel(self, voxel_size):
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self.kernel(voxel_size)
        key = tuple(round(float(t), 6) for t in torch.as_tensor(voxel_size).reshape(-1).tolist())
        if self._cache is None or self._cache[0] != key or self._cache[1].device != self.basis.device:
            w, b = self.kernel(key)
            self._cache = (key, w, b)
        return self._cache[1], self._cache[2]

    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def forward(self, x: torch.Tensor, voxel_size) -> torch.Tensor:
        """Convolve ``x`` with the kernel of ``voxel_size`` (cached in eval mode without gradients).

        Parameters
        ----------
        x : torch.Tensor, shape (N, inC, X, Y, Z)
            Input.
        voxel_size : sequence of 3 float or torch.Tensor
            Voxel size (mm) per array axis, shared by the batch.

        Returns
        -------
        torch.Tensor, shape (N, outC, X, Y, Z)
        """
        w, b = self._cached_kernel(voxel_size)
        return F.conv3d(x, w.to(x.dtype), b.to(x.dtype), padding=self.padding,
                        dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, k={self.k}, dilation={self.dilation}, "
                f"n_basis={self.n_basis}")


class PlainConv3d(nn.Conv3d):
    """``nn.Conv3d`` with "same" padding and the WP-Conv call signature (voxel size ignored)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1, **_):
        super().__init__(in_ch, out_ch, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                         dilation=dilation)

    def forward(self, x, voxel_size=None):  # noqa: D401 - same signature as WPConv3d
        return super().forward(x)


class GatedConv3d(nn.Module):
    """Gated convolution (QSMInvNet): ``LeakyReLU(conv_f(x)) · sigmoid(conv_g(x))``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1,
                 negative_slope: float = 0.2):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv3d(in_ch, 2 * out_ch, kernel_size, padding=pad, dilation=dilation)
        self.slope = negative_slope

    def forward(self, x, voxel_size=None):
        f, g = self.conv(x).chunk(2, dim=1)
        return F.leaky_relu(f, self.slope) * torch.sigmoid(g)


class NonLocalBlock3d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) with a residual connection.

    Attention over all N = X·Y·Z positions (N² memory: use it at the bottleneck). The output
    projection starts at zero so a fresh block is the identity.
    """

    def __init__(self, ch: int, inner: int | None = None):
        super().__init__()
        inner = inner or max(1, ch // 2)
        self.theta = nn.Conv3d(ch, inner, 1)
        self.phi = nn.Conv3d(ch, inner, 1)
        self.g = nn.Conv3d(ch, inner, 1)
        self.out = nn.Conv3d(inner, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.scale = inner ** -0.5

    def forward(self, x):
        n, c = x.shape[:2]
        t = self.theta(x).flatten(2).transpose(1, 2)  # (n, N, i)
        p = self.phi(x).flatten(2)  # (n, i, N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (n, N, i)
        att = torch.softmax(torch.bmm(t, p) * self.scale, dim=-1)
        y = torch.bmm(att, g).transpose(1, 2).reshape(n, -1, *x.shape[2:])
        return x + self.out(y)
