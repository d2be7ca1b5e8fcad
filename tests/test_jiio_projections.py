"""Ball-and-box projections (``jiio.BallBox``): exact Euclidean projection, feasibility, pytrees,
the perturbation set of an image and random points of the set."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jiio


def dykstra(x, project_a, project_b, iters=20000):
    """Euclidean projection onto the intersection of two convex sets (Dykstra's algorithm)."""
    y, p, q = x.copy(), np.zeros_like(x), np.zeros_like(x)
    for _ in range(iters):
        a = project_a(y + p)
        p = y + p - a
        y = project_b(a + q)
        q = a + q - y
    return y


def np_ball(center, radius, norm):
    def project(v):
        d = v - center
        if norm == "linf":
            return center + np.clip(d, -radius, radius)
        n = np.linalg.norm(d)
        return v if n <= radius else center + d * radius / n

    return project


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("seed", range(4))
def test_projection_equals_dykstra_reference(norm, seed):
    rng = np.random.default_rng(seed)
    center = rng.uniform(-0.5, 0.5, size=6)
    lower, upper = -0.6 * np.ones(6), 0.7 * np.ones(6)
    radius = 0.4
    x = center + rng.normal(size=6) * (0.3 + seed)
    ref = dykstra(x, np_ball(center, radius, norm), lambda v: np.clip(v, lower, upper))
    proj = jiio.BallBox(radius, jnp.asarray(center), jnp.asarray(lower), jnp.asarray(upper), norm)
    got = np.asarray(proj(jnp.asarray(x)))
    np.testing.assert_allclose(got, ref, atol=1e-7)
    assert float(proj.violation(jnp.asarray(got))) == 0.0
    # Idempotent on points of the set; the violation of the raw point is positive.
    np.testing.assert_allclose(np.asarray(proj(jnp.asarray(got))), got, atol=1e-12)
    if not np.allclose(got, x):
        assert float(proj.violation(jnp.asarray(x))) > 0


def test_ball_only_equals_l2_and_linf_balls():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    np.testing.assert_allclose(jiio.BallBox(0.5)(x), jiio.L2Ball(0.5)(x), atol=1e-15)
    np.testing.assert_allclose(jiio.BallBox(0.5, norm="linf")(x), jiio.LinfBall(0.5)(x), atol=1e-15)


def test_pytree_input_uses_the_norm_over_all_leaves():
    x = {"a": jnp.full((2,), 2.0), "b": jnp.full((3,), -2.0)}
    proj = jiio.BallBox(1.0, lower=-1.5, upper=1.5)
    out = proj(x)
    sq = sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(out))
    assert sq <= 1.0 and float(proj.violation(out)) == 0.0


def test_perturbation_set_keeps_the_image_valid_in_float32():
    key = jax.random.PRNGKey(0)
    image = jax.random.uniform(key, (8, 8, 1), jnp.float32, -1.0, 1.0)
    for norm, radius in (("l2", 2.0), ("linf", 0.3)):
        threat = jiio.BallBox.perturbation(image, radius, norm)
        delta = threat(3.0 * jax.random.normal(jax.random.PRNGKey(1), image.shape, jnp.float32))
        assert delta.dtype == jnp.float32
        assert float(threat.violation(delta)) == 0.0
        adv = image + delta
        assert float(jnp.min(adv)) >= -1.0 - 1e-6 and float(jnp.max(adv)) <= 1.0 + 1e-6
        if norm == "l2":
            assert float(jnp.linalg.norm(delta)) <= radius
        else:
            # Clipped to the radius rounded to float32 (as LinfBall).
            assert float(jnp.max(jnp.abs(delta))) <= float(np.float32(radius))
    ball_only = jiio.BallBox.perturbation(image, 1.0, "l2", pixel_range=None)
    assert ball_only.lower is None and ball_only.upper is None


def test_sample_lies_in_the_set_and_batches():
    keys = jax.random.split(jax.random.PRNGKey(3), 64)
    threat = jiio.BallBox(0.5, lower=-0.3, upper=0.3)
    points = jax.vmap(lambda k: threat.sample(k, jnp.zeros((4, 4))))(keys)
    assert points.shape == (64, 4, 4)
    assert float(jnp.max(jax.vmap(threat.violation)(points))) == 0.0
    assert float(jnp.std(points)) > 0.01  # not all at the center


def test_jit_argument_and_bad_fields():
    proj = jiio.BallBox(jnp.asarray(0.5), None, -1.0, 1.0, "linf")
    leaves = jax.tree.leaves(proj)
    assert len(leaves) == 3  # radius, lower, upper; norm and bisection_steps are static
    out = jax.jit(lambda p, x: p(x))(proj, jnp.full((3,), 2.0))
    np.testing.assert_allclose(out, 0.5)
    with pytest.raises(ValueError, match="`norm` must be one of"):
        jiio.BallBox(1.0, norm="l1")
    with pytest.raises(ValueError, match="`lower` and `upper` must both"):
        jiio.BallBox(1.0, lower=0.0)
    with pytest.raises(ValueError, match="`radius` must be > 0"):
        jiio.BallBox(-1.0)
    with pytest.raises(ValueError, match="`bisection_steps`"):
        jiio.BallBox(1.0, bisection_steps=0)
