"""The bound transform behind the MINPACK fitter: every free value maps inside the bounds, constants come back
from their free values, and the chained Jacobian is the derivative a finite difference measures."""
from __future__ import annotations

import numpy as np

from discovery.laws.unbounded import Unbounded

INF = np.inf
LO = np.array([0.0, -4.0, -INF, -INF, 1e-4])
HI = np.array([INF, 4.0, 3.0, INF, 1e4])


def test_any_free_value_lands_inside_the_bounds():
    free = Unbounded(LO, HI)
    for u in np.random.default_rng(0).normal(scale=50.0, size=(200, len(LO))):
        theta = free.to_constants(u)
        assert np.all(theta >= LO) and np.all(theta <= HI)


def test_constants_come_back_from_their_free_values():
    free = Unbounded(LO, HI)
    theta = np.array([2.5, -3.9, -7.0, 11.0, 0.3])
    assert np.allclose(free.to_constants(free.to_free(theta)), theta, rtol=1e-12, atol=1e-12)
    outside = np.array([-1.0, 9.0, 5.0, 0.0, 1e6])  # clipped onto the bounds first, never NaN
    assert np.allclose(free.to_constants(free.to_free(outside)), np.clip(outside, LO, HI))


def test_the_chained_jacobian_matches_a_finite_difference():
    free = Unbounded(LO, HI)
    u = np.array([0.7, -0.4, 1.3, -2.0, 0.2])
    weights = np.array([[1.0, 2.0, -1.0, 0.5, 3.0], [0.0, 1.0, 1.0, -2.0, 1.0]])  # f(theta) = weights @ theta
    J = free.chain(weights, u)
    h = 1e-7
    for j in range(len(u)):
        step = np.zeros_like(u)
        step[j] = h
        numeric = weights @ (free.to_constants(u + step) - free.to_constants(u - step)) / (2 * h)
        assert np.allclose(J[:, j], numeric, rtol=1e-6, atol=1e-8)
