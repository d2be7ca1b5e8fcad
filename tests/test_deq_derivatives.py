"""DEQ layer derivatives of every order and mode (float64) and closures under every transform.

Reference: ``Unrolled`` differentiates a long plain iteration (exact to float64 round-off for a
contraction), so each transform of the implicit layer must match it to 1e-7.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import deq
from jiio_jax.deq import Implicit, Neumann, OneStep, Phantom, Unrolled, fixed_point
from jiio_jax.solvers import Anderson, FixedPointIteration

TIGHT = Anderson(max_steps=200, tol=1e-13)
EXACT = Implicit(solver=Anderson(max_steps=200, tol=1e-13))
UNROLLED = Unrolled(FixedPointIteration(max_steps=300, tol=1e-14))
D = 8


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _params(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, D))
    return jnp.asarray(0.6 * w / np.linalg.norm(w, 2)), jnp.asarray(rng.normal(size=D))


def _layer(z, w, x):
    return jnp.tanh(w @ z + x)


def _z(w, x, backward):
    return fixed_point(_layer, jnp.zeros(D), w, x, solver=TIGHT, backward=backward).value


def _loss(w, x, backward):
    return jnp.sum(jnp.sin(_z(w, x, backward)) ** 2)


def test_scalar_layer_hessian_matches_unrolled():
    # The reported case: z = tanh(0.5 z + x); hessian was -0.43826 instead of -0.48657.
    def z_of(x, backward):
        f = lambda z, x: jnp.tanh(0.5 * z + x)
        return fixed_point(f, jnp.zeros(()), x, solver=TIGHT, backward=backward).value

    x = jnp.asarray(0.3)
    for transform in (jax.grad, jax.hessian, lambda g: jax.jacfwd(jax.grad(g))):
        got = transform(lambda x: z_of(x, EXACT))(x)
        want = transform(lambda x: z_of(x, UNROLLED))(x)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda f: jax.jacfwd(f, argnums=1), id="jacfwd"),
        pytest.param(lambda f: jax.jacrev(f, argnums=1), id="jacrev"),
        pytest.param(
            lambda f: lambda w, x: jax.jvp(lambda x: f(w, x), (x,), (jnp.ones_like(x),))[1],
            id="jvp",
        ),
    ],
)
def test_first_order_transforms_of_the_layer(transform):
    w, x = _params()
    got = transform(lambda w, x: _z(w, x, EXACT))(w, x)
    want = transform(lambda w, x: _z(w, x, UNROLLED))(w, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_hessian_and_jvp_of_grad_match_unrolled():
    w, x = _params(1)
    h = jax.hessian(_loss, argnums=1)(w, x, EXACT)
    h_ref = jax.hessian(_loss, argnums=1)(w, x, UNROLLED)
    assert np.max(np.abs(h_ref)) > 1e-2  # a non-trivial Hessian
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-7)
    v = jnp.linspace(-1.0, 1.0, D)
    jg = jax.jvp(lambda x: jax.grad(_loss, argnums=1)(w, x, EXACT), (x,), (v,))[1]
    np.testing.assert_allclose(jg, h_ref @ v, rtol=0, atol=1e-7)
    # Mixed second derivative w.r.t. the weights and the input.
    mixed = jax.jacfwd(jax.grad(_loss, argnums=0), argnums=1)(w, x, EXACT)
    mixed_ref = jax.jacfwd(jax.grad(_loss, argnums=0), argnums=1)(w, x, UNROLLED)
    np.testing.assert_allclose(mixed, mixed_ref, rtol=0, atol=1e-7)


def test_third_order():
    f = lambda z, x: jnp.tanh(0.5 * z + x)
    z_of = lambda x, b: fixed_point(f, jnp.zeros(()), x, solver=TIGHT, backward=b).value
    x = jnp.asarray(-0.2)
    d3 = jax.grad(jax.grad(jax.grad(lambda x: z_of(x, EXACT))))(x)
    d3_ref = jax.grad(jax.grad(jax.grad(lambda x: z_of(x, UNROLLED))))(x)
    np.testing.assert_allclose(d3, d3_ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", [OneStep(), Neumann(3), Phantom(3, 0.5)], ids=repr)
def test_approximate_modes_forward_equals_reverse(mode):
    # Forward and reverse mode agree: both are derivatives of the same stated approximation.
    w, x = _params(2)
    fwd = jax.jacfwd(_z, argnums=1)(w, x, mode)
    rev = jax.jacrev(_z, argnums=1)(w, x, mode)
    np.testing.assert_allclose(fwd, rev, rtol=0, atol=1e-10)


def test_one_step_tangent_is_df_dx():
    w, x = _params(3)
    z = _z(w, x, EXACT)
    want = jax.jacfwd(_layer, argnums=2)(z, w, x)
    np.testing.assert_allclose(jax.jacfwd(_z, argnums=1)(w, x, OneStep()), want, atol=1e-10)


# ---- closures --------------------------------------------------------------------------------


def _explicit_grad(w, xs):
    def total(w):
        per = jax.vmap(lambda x: fixed_point(_layer, jnp.zeros(D), w, x, solver=TIGHT).value)
        return jnp.sum(per(xs) ** 2)

    return jax.grad(total)(w)


def _closure_grad(w, xs):
    def total(w):
        def one(x):
            return fixed_point(lambda z, w: _layer(z, w, x), jnp.zeros(D), w, solver=TIGHT).value

        return jnp.sum(jax.vmap(one)(xs) ** 2)

    return jax.grad(total)(w)


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_closure_over_a_vmapped_value(wrap):
    w, _ = _params(4)
    xs = jnp.asarray(np.random.default_rng(4).normal(size=(3, D)))
    np.testing.assert_allclose(wrap(_closure_grad)(w, xs), _explicit_grad(w, xs), atol=1e-12)


@pytest.mark.parametrize("backward", [EXACT, OneStep(), Neumann(2)], ids=repr)
def test_closure_over_the_differentiated_value(backward):
    w, x = _params(5)

    def closed(w):
        return jnp.sum(
            fixed_point(
                lambda z: _layer(z, w, x), jnp.zeros(D), solver=TIGHT, backward=backward
            ).value
        )  # noqa: E501

    def explicit(w):
        return jnp.sum(
            fixed_point(_layer, jnp.zeros(D), w, x, solver=TIGHT, backward=backward).value
        )  # noqa: E501

    np.testing.assert_allclose(jax.grad(closed)(w), jax.grad(explicit)(w), atol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.grad(closed))(w), jax.grad(explicit)(w), atol=1e-12)


def test_closure_over_an_integer_index():
    w, _ = _params(6)
    table = jnp.asarray(np.random.default_rng(6).normal(size=(5, D)))
    idx = jnp.asarray([0, 3, 4])

    def closed(w):
        one = lambda i: fixed_point(
            lambda z, w: _layer(z, w, table[i]), jnp.zeros(D), w, solver=TIGHT
        )
        return jnp.sum(jax.vmap(one)(idx).value)

    def explicit(w):
        one = lambda x: fixed_point(_layer, jnp.zeros(D), w, x, solver=TIGHT)
        return jnp.sum(jax.vmap(one)(table[idx]).value)

    np.testing.assert_allclose(jax.grad(closed)(w), jax.grad(explicit)(w), atol=1e-12)
    # An integer passed explicitly is a constant too.
    f = lambda z, w, i: _layer(z, w, table[i])
    g = jax.grad(
        lambda w: jnp.sum(
            fixed_point(f, jnp.zeros(D), w, jnp.asarray(2), solver=TIGHT, backward=EXACT).value
        )
    )  # noqa: E501
    np.testing.assert_allclose(
        g(w), jax.grad(lambda w: jnp.sum(_z(w, table[2], EXACT)))(w), atol=1e-12
    )


def test_closure_inside_scan():
    w, _ = _params(7)
    xs = jnp.asarray(np.random.default_rng(7).normal(size=(3, D)))

    def scanned(w):
        def body(carry, x):
            z = fixed_point(lambda z: _layer(z, w, x), jnp.zeros(D), solver=TIGHT).value
            return carry + jnp.sum(z**2), None

        return jax.lax.scan(body, 0.0, xs)[0]

    np.testing.assert_allclose(jax.grad(scanned)(w), _explicit_grad(w, xs), atol=1e-12)


def test_implicit_equilibrium_matches_fixed_point():
    w, x = _params(8)
    z_star = _z(w, x, EXACT)

    def via_primitive(w, x):
        return deq.implicit_equilibrium(_layer, jax.lax.stop_gradient(z_star), w, x, backward=EXACT)

    np.testing.assert_allclose(
        jax.jacfwd(via_primitive, argnums=1)(w, x),
        jax.jacfwd(_z, argnums=1)(w, x, EXACT),
        atol=1e-9,
    )
    h = jax.hessian(lambda x: jnp.sum(via_primitive(w, x) ** 3))(x)
    h_ref = jax.hessian(lambda x: jnp.sum(_z(w, x, UNROLLED) ** 3))(x)
    np.testing.assert_allclose(h, h_ref, atol=1e-7)


def test_custom_vjp_layers_are_reverse_only_and_loud():
    @jax.custom_vjp
    def act(v):
        return jnp.tanh(v)

    act.defvjp(lambda v: (jnp.tanh(v), v), lambda v, g: (g * (1 - jnp.tanh(v) ** 2),))
    w, x = _params(9)
    f = lambda z, w, x: act(w @ z + x)
    loss = lambda x: jnp.sum(
        fixed_point(f, jnp.zeros(D), w, x, solver=TIGHT, backward=EXACT).value ** 2
    )
    np.testing.assert_allclose(
        jax.grad(loss)(x), jax.grad(lambda x: jnp.sum(_z(w, x, EXACT) ** 2))(x), atol=1e-10
    )
    with pytest.raises(TypeError):
        jax.jvp(loss, (x,), (x,))
    with pytest.raises(TypeError):  # JAX's custom_vjp error or ours, depending on the order
        jax.hessian(loss)(x)
    with pytest.raises((TypeError, ValueError)):  # reverse over reverse: loud, never a number
        jax.grad(lambda x: jnp.sum(jax.grad(loss)(x)))(x)
