"""JIIO's Type-I Anderson (``jiio._accelerators.TypeIAnderson``) against a from-scratch reference.

The accelerator keeps step differences in ring buffers and updates its Gram matrix
incrementally; the reference below keeps the points themselves and rebuilds
``H_ij = <X_i - X_k, G_j>`` and the bordered system at every step, so a slip in the slot
order, the wrap-around of the ring or the restart mask shows up as a different proposal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax.jiio._accelerators import TypeIAnderson

N = 7


def reference_proposal(points, residuals, mixing):
    """``sum_j a_j (X_j + beta G_j)`` with the Type-I weights of the given history."""
    xs, gs = np.stack(points), np.stack(residuals)
    h = (xs - xs[-1]) @ gs.T  # H_ij = <X_i - X_k, G_j>
    m = len(points)
    system = np.zeros((m + 1, m + 1))
    system[0, 1:] = system[1:, 0] = 1.0
    system[1:, 1:] = h
    weights = np.linalg.solve(system, np.eye(m + 1)[0])[1:]
    return weights @ (xs + mixing * gs)


@pytest.mark.parametrize(
    "memory, mixing, max_growth", [(3, 1.0, np.inf), (4, 0.7, np.inf), (3, 1.0, 1.05)]
)
def test_proposals_match_the_from_scratch_reference(memory, mixing, max_growth):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(N, N))
    a *= 0.9 / np.max(np.abs(np.linalg.eigvals(a)))
    b = rng.normal(size=N)

    def residual(x):  # far from the origin: F(x) = tanh(A x + b) + 20
        return np.tanh(a @ x + b) + 20.0 - x

    algo = TypeIAnderson(memory=memory, mixing=mixing, ridge=0.0, max_growth=max_growth)
    propose, observe = jax.jit(algo.propose), jax.jit(algo.observe)
    x = rng.normal(size=N)
    g = residual(x)
    hist = algo.init(jnp.asarray(x), jnp.asarray(g))
    points, residuals, restarts = [x], [g], 0
    for k in range(1, 4 * memory):
        proposal = np.asarray(propose(hist, jnp.asarray(x), jnp.asarray(g), jnp.asarray(k)))
        expected = reference_proposal(points, residuals, mixing)
        np.testing.assert_allclose(proposal, expected, rtol=1e-9, atol=1e-9)
        # Step to a perturbed proposal so the history is not on a line.
        x_new = proposal + 1e-2 * rng.normal(size=N)
        g_new = residual(x_new)
        hist = observe(hist, jnp.asarray(x), jnp.asarray(g), jnp.asarray(x_new),
                       jnp.asarray(g_new), jnp.asarray(k))  # fmt: skip
        x, g = x_new, g_new
        if int(hist.start) == k:  # a restart keeps only the newest point
            points, residuals, restarts = [], [], restarts + 1
        points, residuals = (points + [x])[-memory:], (residuals + [g])[-memory:]
    if max_growth < np.inf:
        assert restarts > 0  # the restart path was exercised
