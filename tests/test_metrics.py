"""qsmflow.metrics on identical, offset, scaled and masked arrays (values known in closed form)."""

import numpy as np
import pytest
from scipy import ndimage

from qsmflow import metrics


@pytest.fixture(scope="module")
def ref():
    """A smooth χ-like map (ppm) with structure at several scales, and a brain-like mask."""
    rng = np.random.default_rng(0)
    y = ndimage.gaussian_filter(rng.standard_normal((24, 26, 22)), 2.0)
    y = 0.1 * y / y.std()
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in y.shape], indexing="ij")
    mask = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 0.8
    return y, mask


def test_identical_arrays(ref):
    y, m = ref
    r = metrics.all_metrics(y, y, m)
    assert r["rmse"] == 0 and r["nrmse"] == 0 and r["hfen"] == 0
    assert r["nrmse_detrended"] == pytest.approx(0, abs=1e-10)
    assert r["ssim"] == pytest.approx(1.0) and r["xsim"] == pytest.approx(1.0)
    assert r["r"] == pytest.approx(1.0)


def test_known_offset_and_scale(ref):
    y, m = ref
    c = 0.05
    n = m.sum()
    # RMSE% of an offset is 100·|c|·√n/‖y‖; demeaned and detrended NRMSE remove it
    assert metrics.rmse_percent(y + c, y, m) == pytest.approx(
        100 * c * np.sqrt(n) / np.linalg.norm(y[m]), rel=1e-12)
    assert metrics.nrmse_demeaned(y + c, y, m) == pytest.approx(0, abs=1e-10)
    assert metrics.correlation(y + c, y, m) == pytest.approx(1.0)
    # scale: 0.5·y is 50 % off, −y is 200 % off with r = −1; detrending removes the scale
    assert metrics.rmse_percent(0.5 * y, y, m) == pytest.approx(50.0)
    assert metrics.rmse_percent(-y, y, m) == pytest.approx(200.0)
    assert metrics.correlation(-y, y, m) == pytest.approx(-1.0)
    assert metrics.nrmse_detrended(2 * y + 0.3, y, m) == pytest.approx(0, abs=1e-9)
    assert metrics.nrmse_detrended(-y, y, m) == pytest.approx(0, abs=1e-9)
    # demeaned NRMSE of a scaled, demeaned map: 100·|1 − a|
    yd = y - y[m].mean()
    assert metrics.nrmse_demeaned(0.7 * yd, yd, m) == pytest.approx(30.0)
    # HFEN is (almost: truncated LoG kernel) blind to a constant when the mask has no edge
    full = np.ones_like(m)
    assert metrics.hfen(y + c, y, full) < 0.5  # measured 0.07 %; an offset inside a mask: > 10 %
    assert metrics.hfen(y + c, y, m) > 10
    assert metrics.hfen(0.5 * y, y, m) == pytest.approx(50.0)
    # SSIM drops for a wrong map but stays in [-1, 1]
    noisy = y + np.random.default_rng(1).normal(0, 0.1, y.shape)
    s = metrics.ssim(noisy, y, m)
    assert -1 <= s < 0.9
    assert metrics.xsim(noisy, y, m) < metrics.xsim(y, y, m)


def test_values_outside_mask_ignored(ref):
    y, m = ref
    x = y + 0.01 * np.random.default_rng(2).standard_normal(y.shape)
    x2 = x.copy()
    x2[~m] = 1e3
    for name in ("rmse_percent", "nrmse_demeaned", "nrmse_detrended", "hfen", "ssim", "xsim",
                 "correlation"):
        fn = getattr(metrics, name)
        assert fn(x2, y, m) == pytest.approx(fn(x, y, m)), name


def test_bad_input(ref):
    y, m = ref
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.rmse_percent(y[:-1], y, m)
    with pytest.raises(ValueError, match="mask shape"):
        metrics.rmse_percent(y, y, m[:-1])
    with pytest.raises(ValueError, match="empty"):
        metrics.rmse_percent(y, y, np.zeros_like(m))
