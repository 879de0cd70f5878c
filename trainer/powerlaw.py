"""Power-law fits of error against scale, as in the CLIP scaling-law papers (Cherti et al. 2022).

``error = a * N^-b`` (a straight line on log-log axes, fitted by least squares in log space), or
with an irreducible floor ``error = a * N^-b + c`` (non-linear least squares, started from the
log-log fit). ``b`` is the exponent the papers report (their ``alpha`` is ``-b``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit


class PowerLawError(ValueError):
    """Points that cannot support the fit (too few, non-positive, a single scale)."""


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    b: float  # the exponent: error falls as N^-b
    c: float  # the floor (0 without offset)
    r2: float  # in log space for the pure power law, in error space with an offset
    n: int
    offset: bool

    def predict(self, samples: np.ndarray | float) -> np.ndarray:
        return self.a * np.power(np.asarray(samples, dtype=np.float64), -self.b) + self.c

    def formula(self) -> str:
        floor = f" + {self.c:.3g}" if self.offset else ""
        return f"error = {self.a:.3g} * N^({-self.b:.3g}){floor}"


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / total if total > 0 else 1.0


def _power(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(n, -b) + c


def fit_power_law(samples: np.ndarray, error: np.ndarray, offset: bool = False) -> PowerLawFit:
    """Fit ``error = a * N^-b (+ c)`` to points (samples seen, error rate)."""
    n = np.asarray(samples, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if n.shape != e.shape or n.ndim != 1:
        raise PowerLawError("samples and error must be 1-d arrays of the same length")
    keep = np.isfinite(n) & np.isfinite(e)
    n, e = n[keep], e[keep]
    if np.any(n <= 0) or np.any(e <= 0):
        raise PowerLawError("a power law needs positive sample counts and error rates")
    need = 3 if offset else 2
    if len(np.unique(n)) < need:
        raise PowerLawError(f"fitting needs at least {need} distinct sample counts; got {len(np.unique(n))}")
    x, y = np.log(n), np.log(e)
    slope, intercept = np.polyfit(x, y, 1)
    a, b = float(np.exp(intercept)), float(-slope)
    if not offset:
        return PowerLawFit(a, b, 0.0, _r2(y, intercept + slope * x), len(n), False)
    floor_max = float(e.min()) * (1 - 1e-9)
    p0 = (a, max(b, 1e-3), 0.5 * floor_max)
    bounds = ([0.0, 0.0, 0.0], [np.inf, 10.0, floor_max])
    (a, b, c), _ = curve_fit(_power, n, e, p0=p0, bounds=bounds, maxfev=20000)
    return PowerLawFit(float(a), float(b), float(c), _r2(e, _power(n, a, b, c)), len(n), True)
