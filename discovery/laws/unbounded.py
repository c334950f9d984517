"""Bounded constants as unbounded ones, so MINPACK's Levenberg-Marquardt (which takes no bounds) can fit them.

The MINUIT transform, as lmfit uses it: a constant bounded on both sides is lo + (hi - lo) (1 + sin u) / 2, one
bounded below is lo - 1 + sqrt(u^2 + 1), one bounded above hi + 1 - sqrt(u^2 + 1), a free one u itself. Every u
maps inside the bounds, so no step can leave them; a constant that belongs on a bound gets there as u runs to
the map's turning point. `chain` turns a Jacobian in the constants into one in u.
"""
from __future__ import annotations

import numpy as np


class Unbounded:
    """The map between a law's constants (within lo, hi) and free variables u, for one fit's bounds."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.both = np.isfinite(lo) & np.isfinite(hi)
        self.lower = np.isfinite(lo) & ~self.both
        self.upper = np.isfinite(hi) & ~self.both
        self.lo = np.where(np.isfinite(lo), lo, 0.0)
        self.hi = np.where(np.isfinite(hi), hi, 0.0)
        self.half = (self.hi - self.lo) / 2

    def to_free(self, theta: np.ndarray) -> np.ndarray:
        """u for constants theta (clipped into the bounds first)."""
        x = np.clip(theta, np.where(self.both | self.lower, self.lo, -np.inf),
                    np.where(self.both | self.upper, self.hi, np.inf))
        with np.errstate(all="ignore"):
            two = np.arcsin(np.clip((x - self.lo) / np.where(self.both, self.half, 1.0) - 1, -1, 1))
            low = np.sqrt(np.maximum((x - self.lo + 1) ** 2 - 1, 0.0))
            up = np.sqrt(np.maximum((self.hi - x + 1) ** 2 - 1, 0.0))
        return np.where(self.both, two, np.where(self.lower, low, np.where(self.upper, up, x)))

    def to_constants(self, u: np.ndarray) -> np.ndarray:
        s = np.sqrt(u * u + 1)
        return np.where(self.both, self.lo + self.half * (1 + np.sin(u)),
                        np.where(self.lower, self.lo - 1 + s, np.where(self.upper, self.hi + 1 - s, u)))

    def chain(self, J: np.ndarray, u: np.ndarray) -> np.ndarray:
        """d f / d u from d f / d constants, J (n, k)."""
        s = np.sqrt(u * u + 1)
        d = np.where(self.both, self.half * np.cos(u), np.where(self.lower, u / s, np.where(self.upper, -u / s, 1.0)))
        return J * d[None, :]
