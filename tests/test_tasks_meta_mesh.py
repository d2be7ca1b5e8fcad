"""The meta task's projected-Adam inner loop runs under the training loop's data mesh.

``jiio.projected_adam`` on the meta task's row-vmapped support map once raised
NotImplementedError in JAX 0.10's conv batching rule when an output sharding was set (its adjoint
solver vmaps the map's VJP); the task then used a per-row copy of the algorithm. With the MDEQ
convs' own VJP (``jiio_jax.models.conv``) the library function runs there; this test keeps it so.
Slow (two compilations of the task's loss, ~30 s of CPU); the conv pattern behind the old error
is checked fast in ``test_conv.py::test_conv2d_nested_vmap_under_data_mesh``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import load_config

from jiio_jax.tasks import get_task
from jiio_jax.train import mesh as mesh_lib

pytestmark = [pytest.mark.usefixtures("fast_compile"), pytest.mark.slow]


def test_projected_adam_loss_and_grad_under_data_mesh():
    config = load_config("digits_meta", "small")
    config.model.method = "projected_adam"
    # Short loops and no Jacobian penalty (not part of the inner loop) keep compilation short.
    config.model.update(jac_weight=0.0)
    config.model.adam.update(num_steps=2)
    config.model.adam.solver.update(max_steps=3)
    config.model.forward.update(max_steps=3)
    config.model.backward.solver.update(max_steps=3)
    task = get_task("meta")(config)
    batch = next(task.make_iterator("train", 4, seed=0))
    params = task.init_params(jax.random.key(0), batch)
    key = jax.random.key(1)

    def value_and_grad(params, batch):
        # The training step's differentiation (the inner loop runs on stopped parameters).
        loss = lambda p: task.loss(p, batch, key, 0)
        return jax.value_and_grad(loss, has_aux=True)(params)

    want = jax.jit(value_and_grad)(params, batch)
    mesh = mesh_lib.make_data_mesh()
    assert mesh.size == 4  # conftest's virtual CPU devices: episodes really are split
    rep, dat = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
    with jax.set_mesh(mesh):
        got = jax.jit(value_and_grad, in_shardings=(rep, dat), out_shardings=rep)(
            jax.device_put(params, rep), jax.device_put(batch, dat)
        )
    (loss, metrics), grads = got
    assert metrics["inner_steps"] == 2
    assert metrics["context_norm"] > 0  # Adam moved the contexts away from v = 0
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
