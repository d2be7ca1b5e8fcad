"""Gradient agreement and speed on a *trained* DEQ layer: jiio_jax vs optimistix ImplicitAdjoint.

A tanh DEQ classifier ``z = tanh(W z + U x + b)``, ``logits = H z*`` is trained on the embedded
digits with jiio_jax (Adam, float32). On the trained weights (whose ``W`` is no longer a
contraction by norm), the gradient of the cross-entropy of a test batch w.r.t. ``(W, U, b)`` is
computed by

- jiio_jax ``fixed_point`` (Anderson forward, ``Implicit`` backward),
- optimistix ``fixed_point`` with ``ImplicitAdjoint`` (FixedPointIteration and Newton),

each in float32, and compared with a float64 reference (Anderson to 1e-13, Newton polish, dense
IFT adjoint). Timings are forward+backward under jit (``jiio_jax.evaluation.clock``: compile
excluded, one warm-up, medians of interleaved runs).

    python experiments/benchmarks/trained_layer.py [--steps=300] [--repeats=20] [--smoke]

writes the measurements to ``experiments/results/trained_layer.json`` and the report
``trained_layer.md`` from that JSON alone (``--report_only``: the report only, no measuring).
``measure_agreement`` / ``agreement_markdown`` are also used by the solver benchmark
(``solvers.py``) for its report.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from jiio_jax import deq, solvers  # noqa: E402

D = 64
RESULTS = pathlib.Path(__file__).resolve().parents[1] / "results"


def _layer(z, w, u, b, x):
    return jnp.tanh(w @ z + u @ x + b)


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x[:1500], data.target[:1500], x[1500:], data.target[1500:]


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(steps: int, log=print):
    """Trains the layer + linear head with jiio_jax; returns float32 params and test data."""
    x_tr, y_tr, x_te, y_te = _digits()
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(0.5 * rng.normal(size=(D, D)) / np.sqrt(D), jnp.float32),
        "u": jnp.asarray(rng.normal(size=(D, 64)) / 8.0, jnp.float32),
        "b": jnp.zeros(D, jnp.float32),
        "h": jnp.asarray(rng.normal(size=(10, D)) / 8.0, jnp.float32),
    }
    solver = solvers.Anderson(max_steps=60, tol=1e-4)

    def loss(p, x, y):
        solve = lambda xi: (
            deq.fixed_point(_layer, jnp.zeros(D), p["w"], p["u"], p["b"], xi, solver=solver).value
        )
        return _ce(jax.vmap(solve)(x) @ p["h"].T, y)

    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        updates, s = opt.update(g, s)
        return optax.apply_updates(p, updates), s, value

    for i in range(steps):
        idx = rng.choice(len(x_tr), 128, replace=False)
        params, state, value = step(params, state, x_tr[idx], y_tr[idx])
        if (i + 1) % 100 == 0:
            log(f"  train step {i + 1}: loss {float(value):.3f}")
    return params, x_te[:128], y_te[:128]


def _jiio_grad(p, x, y):
    solver = solvers.Anderson(max_steps=100, tol=1e-5)
    backward = deq.Implicit(solver=solvers.Anderson(max_steps=100, tol=1e-5))

    def loss(w, u, b):
        solve = lambda xi: (
            deq.fixed_point(
                _layer, jnp.zeros(D), w, u, b, xi, solver=solver, backward=backward
            ).value
        )
        return _ce(jax.vmap(solve)(x) @ p["h"].T, y)

    return jax.grad(loss, argnums=(0, 1, 2))(p["w"], p["u"], p["b"])


def _optx_grad(kind: str):
    import optimistix as optx

    def grad(p, x, y):
        if kind == "fpi":
            solver = optx.FixedPointIteration(rtol=1e-5, atol=1e-5)
        else:
            solver = optx.Newton(rtol=1e-5, atol=1e-5)

        def loss(w, u, b):
            def solve(xi):
                fn = lambda z, args: _layer(z, *args)
                sol = optx.fixed_point(
                    fn,
                    solver,
                    jnp.zeros(D, w.dtype),
                    args=(w, u, b, xi),
                    max_steps=500,
                    adjoint=optx.ImplicitAdjoint(),
                    throw=False,
                )
                return sol.value

            return _ce(jax.vmap(solve)(x) @ p["h"].T, y)

        return jax.grad(loss, argnums=(0, 1, 2))(p["w"], p["u"], p["b"])

    return grad


def _reference_grad(p, x, y):
    """float64: z* by Anderson to 1e-13 + Newton polish, dense IFT adjoint per sample."""

    def zstar(xi):
        fx = lambda z: _layer(z, p["w"], p["u"], p["b"], xi)
        z = solvers.anderson(fx, jnp.zeros(D), max_steps=3000, tol=1e-13).value
        for _ in range(3):
            z = z - jnp.linalg.solve(jnp.eye(D) - jax.jacobian(fx)(z), z - fx(z))
        return z

    zs = jax.vmap(zstar)(x)
    g_z = jax.grad(lambda zs: _ce(zs @ p["h"].T, y))(zs)

    def one(z, xi, gz):
        jac = jax.jacobian(lambda z: _layer(z, p["w"], p["u"], p["b"], xi))(z)
        adj = jnp.linalg.solve((jnp.eye(D) - jac).T, gz)
        _, vjp = jax.vjp(lambda w, u, b: _layer(z, w, u, b, xi), p["w"], p["u"], p["b"])
        return vjp(adj)

    gw, gu, gb = jax.vmap(one)(zs, x, g_z)
    res = jnp.max(
        jnp.linalg.norm(
            jax.vmap(lambda z, xi: _layer(z, p["w"], p["u"], p["b"], xi) - z)(zs, x), axis=-1
        )
    )  # noqa: E501
    return (gw.sum(0), gu.sum(0), gb.sum(0)), res


def _flat(g):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in g])


def measure_agreement(
    steps: int = 300, repeats: int = 20, smoke: bool = False, log=print
) -> dict[str, Any]:
    """Relative gradient errors vs float64 and fwd+bwd time of each method (JSON types)."""
    if smoke:
        steps, repeats = 2, 2
    params, x, y = train(steps, log)
    rho = float(np.max(np.abs(np.linalg.eigvals(np.asarray(params["w"], np.float64)))))
    norm = float(np.linalg.norm(np.asarray(params["w"], np.float64), 2))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        g_ref, res = jax.jit(_reference_grad)(p64, jnp.asarray(x, jnp.float64), jnp.asarray(y))
        ref = _flat(g_ref)
    methods = {
        "jiio_jax Anderson + Implicit": _jiio_grad,
        "optimistix FixedPointIteration + ImplicitAdjoint": _optx_grad("fpi"),
        "optimistix Newton + ImplicitAdjoint": _optx_grad("newton"),
    }
    args = (params, jnp.asarray(x), jnp.asarray(y))
    calls, grads, compile_s = {}, {}, {}
    for name, fn in methods.items():
        compiled, compile_s[name] = common.compile_ahead(fn, *args)
        calls[name] = functools.partial(compiled, *args)
        grads[name] = _flat(calls[name]())
    times = common.interleaved_medians(calls, repeats)
    ours = grads["jiio_jax Anderson + Implicit"]
    rows = []
    for name in methods:
        g = grads[name]
        rows.append(
            {
                "method": name,
                "rel_err_vs_float64": float(np.linalg.norm(g - ref) / np.linalg.norm(ref)),
                "rel_diff_vs_ours": float(np.linalg.norm(g - ours) / np.linalg.norm(ours)),
                "ms": 1e3 * times[name],
                "compile_s": compile_s[name],
            }
        )
        r = rows[-1]
        log(
            f"  {name:50s} rel.err {r['rel_err_vs_float64']:.1e}  vs ours "
            f"{r['rel_diff_vs_ours']:.1e}  {r['ms']:.1f} ms"
        )
    return {
        "steps": steps,
        "repeats": repeats,
        "spectral_radius": rho,
        "spectral_norm": norm,
        "batch": len(y),
        "reference_residual": float(res),
        "rows": rows,
    }


def agreement_markdown(data: dict[str, Any]) -> str:
    """The section's markdown, from ``measure_agreement``'s saved measurements alone."""
    rows = [
        [
            r["method"],
            f"{r['rel_err_vs_float64']:.1e}",
            f"{r['rel_diff_vs_ours']:.1e}",
            f"{r['ms']:.1f}",
            f"{r['compile_s']:.1f}",
        ]
        for r in data["rows"]
    ]
    headers = [
        "method (float32)",
        "rel. err vs float64",
        "rel. diff vs jiio_jax",
        "fwd+bwd ms",
        "compile s",
    ]
    return (
        f"**Trained tanh DEQ layer** (digits, d={D}, {data['steps']} Adam steps; trained W has "
        f"spectral radius {data['spectral_radius']:.2f}, norm {data['spectral_norm']:.2f}; test "
        f"batch {data['batch']}; float64 reference z* residual "
        f"{data['reference_residual']:.1e})\n\n" + common.markdown_table(headers, rows)
    )


def report(results: dict[str, Any]) -> str:
    """``trained_layer.md``, from the saved measurements alone."""
    return (
        "# Gradient agreement on a trained DEQ layer\n\n"
        f"`{results['command']}` on {results['machine']}.\n\n"
        f"{agreement_markdown(results['agreement'])}\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--out",
        default=None,
        help="the report (default experiments/results/trained_layer.md; with --smoke nothing "
        "is written unless given); measurements: <out stem>.json",
    )
    common.add_report_only_flag(parser)
    args = parser.parse_args(argv)
    out = args.out
    if out is None and not (args.smoke and not args.report_only):
        out = str(RESULTS / "trained_layer.md")
    json_path = str(pathlib.Path(out).with_suffix(".json")) if out else None
    if args.report_only:
        results = common.load_results(json_path)
    else:
        results = {
            "command": f"python experiments/benchmarks/trained_layer.py --steps={args.steps} "
            f"--repeats={args.repeats}" + (" --smoke" if args.smoke else ""),
            "machine": common.machine_description(),
            "agreement": measure_agreement(args.steps, args.repeats, args.smoke),
        }
        results = common.save_results(json_path, results) if out else common.as_json(results)
    text = report(results)
    print(text)
    if out:
        pathlib.Path(out).write_text(text)


if __name__ == "__main__":
    main()
