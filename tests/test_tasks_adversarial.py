"""The adversarial task: threat-set projection, PGD / JIIO attacks, losses, evaluation, configs.

Everything runs on 8x8 digits in float32 (the conftest enables x64, so dtypes are explicit),
mostly with the one-branch, 4-channel MDEQ of ``configs/digits_adv.py:small``. The attack tests
use a module-scoped undefended model: a two-branch tiny MDEQ (``TRAINED_MDEQ``; the one-branch
model does not learn in a few steps) briefly trained without attacks.
"""

from __future__ import annotations

import json
import os

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jiio_jax import data as data_lib
from jiio_jax.data.config import read_config as data_read_config
from jiio_jax.jiio import BallBox
from jiio_jax.losses import cross_entropy
from jiio_jax.models.configs import CIFAR_CLS, MNIST_CLS
from jiio_jax.tasks import get_task
from jiio_jax.tasks.adversarial import AdversarialTask
from jiio_jax.tasks.attacks import threat_sets
from jiio_jax.train import train_and_evaluate
from jiio_jax.train.config import validate_config

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = jnp.float32
TRAIN_STEPS = 60
# Two branches (8x8 and 4x4): ~70% test accuracy after TRAIN_STEPS Adam steps (3e-3).
TRAINED_MDEQ = dict(
    channels=(8, 16),
    expansion=2,
    num_groups=4,
    head_channels=(4, 8),
    final_channels=32,
    conv_init_std=0.1,
)


def load_config(name: str, arg: str | None = "small") -> ml_collections.ConfigDict:
    return helpers.load_config(name, arg)


def small_config(**model) -> ml_collections.ConfigDict:
    config = load_config("digits_adv")
    config.model.update(model)
    return config


def digits_batch(split: str, size: int, seed: int = 0) -> dict[str, jax.Array]:
    config = load_config("digits_adv")
    it = data_lib.make_iterator(config.data, split, size, seed=seed, shuffle=split == "train")
    batch = next(it)
    return {"image": jnp.asarray(batch["image"], F32), "label": jnp.asarray(batch["label"])}


# ---------------------------------------------------------------------------------------------
# The threat set.
# ---------------------------------------------------------------------------------------------


def _reference_projection(y, lower, upper, radius, norm):
    """Float64 NumPy projection onto the ball ∩ box (l2: 200 bisection steps on t)."""
    y, lower, upper = (np.asarray(a, np.float64) for a in (y, lower, upper))
    if norm == "linf":
        return np.clip(y, np.maximum(lower, -radius), np.minimum(upper, radius))
    clip = lambda t: np.clip(t * y, lower, upper)
    if np.linalg.norm(clip(1.0)) <= radius:
        return clip(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.linalg.norm(clip(mid)) <= radius else (lo, mid)
    return clip(lo)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("clip_pixels", [True, False])
def test_threat_set_is_the_euclidean_projection(norm, clip_pixels):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (16, 4, 4, 1)).astype(np.float32)
    images[:, 0, 0, 0] = 1.0  # pixels on the range boundary
    # Perturbations from tiny (inside) to 3x the radius.
    y = rng.normal(size=images.shape) * rng.uniform(0.02, 1.0, (16, 1, 1, 1))
    radius = 0.6 if norm == "l2" else 0.3
    y = jnp.asarray(y, F32)
    threats = threat_sets(jnp.asarray(images), radius, norm, clip_pixels)
    p = jax.jit(jax.vmap(lambda t, d: t(d)))(threats, y)
    assert p.dtype == F32
    violation = jax.vmap(lambda t, d: t.violation(d))(threats, p)
    assert float(jnp.max(violation)) == 0.0
    if clip_pixels:
        assert float(jnp.max(jnp.abs(images + p))) <= 1.0
    # Idempotent, and the NumPy float64 reference projection.
    np.testing.assert_allclose(jax.vmap(lambda t, d: t(d))(threats, p), p, atol=1e-6)
    for i in range(len(images)):
        lower = -1 - images[i] if clip_pixels else np.full(images[i].shape, -np.inf)
        upper = 1 - images[i] if clip_pixels else np.full(images[i].shape, np.inf)
        ref = _reference_projection(y[i], lower, upper, radius, norm)
        np.testing.assert_allclose(p[i], ref, atol=2e-6)


def test_threat_set_validates_arguments():
    with pytest.raises(ValueError, match="norm"):
        BallBox(1.0, norm="l1")
    with pytest.raises(ValueError, match="lower"):
        BallBox(1.0, lower=jnp.zeros(3))


# ---------------------------------------------------------------------------------------------
# Attacks on an undefended, briefly trained model.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """``(task, params, grads, metrics)``: the clean-trained classifier (TRAIN_STEPS Adam steps)
    with the gradients and metrics of its last step."""
    config = small_config(method="clean")
    config.model.mdeq.update(TRAINED_MDEQ)
    task = get_task("adversarial")(config)
    batch = digits_batch("train", 64)
    params = task.init_params(jax.random.key(0), batch)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, batch, key):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: task.loss(p, batch, key, jnp.int32(0)), has_aux=True
        )(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, (loss, metrics, grads)

    it = data_lib.make_iterator(config.data, "train", 64, seed=1)
    opt_state = tx.init(params)
    for i in range(TRAIN_STEPS):
        batch = {k: jnp.asarray(v) for k, v in next(it).items()}
        params, opt_state, last = step(params, opt_state, batch, jax.random.key(i))
    return task, params, last


@pytest.mark.parametrize(("norm", "epsilon"), [("l2", 0.5), ("linf", 0.1)])
def test_attacks_stay_in_threat_set_and_reduce_accuracy(trained, norm, epsilon):
    _, params, _ = trained
    config = small_config(norm=norm, epsilon=epsilon)
    config.model.mdeq.update(TRAINED_MDEQ)
    config.eval.update(pgd_steps=10, jiio_steps=20)
    task = AdversarialTask(config)
    batch = digits_batch("test", 100)
    images, labels = batch["image"], batch["label"]

    @jax.jit
    def run(params, images, labels):
        d_pgd = task._eval_pgd(params, images, labels, jax.random.key(0))
        d_jiio = task._eval_jiio(params, images, labels)
        # Accuracy re-solved with the model's own batched forward (independent of the task).
        acc = [
            jnp.mean(jnp.argmax(task.model(params, images + d)[0], -1) == labels)
            for d in (jnp.zeros_like(images), d_pgd, d_jiio)
        ]
        return d_pgd, d_jiio, jnp.stack(acc)

    d_pgd, d_jiio, (clean, acc_pgd, acc_jiio) = run(params, images, labels)
    radius = 2 * epsilon  # epsilon is on the [0, 1] scale, the images on [-1, 1]
    for delta in (d_pgd, d_jiio):
        assert delta.dtype == F32
        flat = np.asarray(delta).reshape(len(delta), -1)
        norms = np.linalg.norm(flat, axis=1) if norm == "l2" else np.abs(flat).max(1)
        assert norms.max() <= radius * (1 + 1e-6)
        assert np.median(norms) > 0.9 * radius  # the attacks use their budget
        assert float(jnp.max(jnp.abs(images + delta))) <= 1.0
    assert clean > 0.5, f"the undefended model did not train ({clean:.2f})"
    assert acc_pgd < clean - 0.2, (clean, acc_pgd)
    assert acc_jiio < clean - 0.2, (clean, acc_jiio)


def _reference_pgd(task, params, images, labels, threats, steps, step_size, delta):
    """The attacks' PGD written out: ``delta += step_size r d(grad CE)``, projected."""
    radius = jnp.reshape(jnp.asarray(threats.radius, F32), (-1, 1, 1, 1))
    for _ in range(steps):
        g = jax.grad(lambda d: jnp.sum(cross_entropy(task.model(params, images + d)[0], labels)))(
            delta
        )
        if threats.norm == "l2":
            d = g / (jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True)) + 1e-12)
        else:
            d = jnp.sign(g)
        delta = jax.vmap(lambda t, x: t(x))(threats, delta + step_size * radius * d)
    return delta


@pytest.mark.parametrize(("norm", "epsilon", "random"), [("l2", 0.5, True), ("linf", 0.1, False)])
def test_attack_pgd_is_jiio_pgd(norm, epsilon, random):
    """The training and evaluation PGD is ``jiio.pgd`` on the task's inner problem (identical
    outputs), with the attack semantics (ascent on the CE, normalised L2 / sign linf steps of
    ``step_size * r``, random start, ball-and-box projection)."""
    from jiio_jax import jiio
    from jiio_jax.evaluation.robustness import attack_fns
    from jiio_jax.tasks.attacks import random_start

    config = small_config(norm=norm, epsilon=epsilon)
    config.eval.update(pgd_steps=3, pgd_step_size=0.5, pgd_random_start=random)
    task = AdversarialTask(config)
    params = task.init_params(jax.random.key(0), digits_batch("test", 4))
    batch = digits_batch("test", 6)
    images, labels = batch["image"], batch["label"]
    key = jax.random.key(3)
    delta = jax.jit(task._eval_pgd)(params, images, labels, key)
    fns = attack_fns(config)
    delta_eval, fevals = fns.pgd(params, images, labels, key, jnp.int32(3))
    threats = threat_sets(images, task.eval_radius, norm, True)
    delta0 = random_start(key, threats, images.shape) if random else jnp.zeros_like(images)

    def direct(image, label, d0):
        p = task.inner_problem(params, {"image": image, "label": label})
        return jiio.pgd(
            p.f, p.cost, p.z0, d0, *p.args,
            step_size=jnp.asarray(0.5 * task.eval_radius, F32), num_steps=3,
            projection=p.projection, direction="normalized" if norm == "l2" else "sign",
            normalize_eps=1e-12, forward_solver=task.model.solver, backward=task.model.backward,
        )  # fmt: skip

    sol = jax.jit(jax.vmap(direct))(images, labels, delta0)
    # Separate compilations (the direct call also solves at the end): XLA rounding only.
    np.testing.assert_allclose(delta, sol.x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(delta_eval, sol.x, rtol=0, atol=1e-5)
    # The eval count is the 3 gradient steps' forward solves (jiio.pgd's also has the final one).
    assert np.all(np.asarray(fevals) > 0)
    assert np.all(np.asarray(fevals) < np.asarray(sol.forward_steps))
    ref = _reference_pgd(task, params, images, labels, threats, 3, 0.5, delta0)
    np.testing.assert_allclose(delta, ref, atol=2e-5)
    assert float(jnp.max(jnp.abs(delta - delta0))) > 0.1  # the steps moved delta


def test_there_is_one_pgd_loop():
    """No PGD iteration outside ``jiio/baselines.py``: the attacks call ``jiio.pgd``."""
    for rel in ("tasks/attacks.py", "tasks/adversarial.py", "evaluation/robustness.py"):
        with open(os.path.join(REPO, "jiio_jax", rel)) as f:
            text = f.read()
        for pattern in ("fori_loop", "lax.scan", "jnp.sign(", "def pgd_counted"):
            assert pattern not in text, (rel, pattern)


# ---------------------------------------------------------------------------------------------
# Evaluation: eval mode, equilibria re-solved at the perturbed input.
# ---------------------------------------------------------------------------------------------


def test_evaluate_is_eval_mode_and_resolves_at_the_perturbed_input():
    config = small_config()
    config.model.mdeq.update(conv_init_std=0.1, dropout=0.5)
    task = AdversarialTask(config)
    batch = digits_batch("test", 16)
    params = task.init_params(jax.random.key(0), batch)
    images, labels = batch["image"], batch["label"]
    rng = np.random.default_rng(0)
    fixed = {
        name: jnp.asarray(0.3 * rng.normal(size=images.shape), F32) for name in ("pgd", "jiio")
    }
    # The attacks are replaced by fixed perturbations, isolating what evaluate does with them.
    task._eval_pgd = lambda params, images, labels, rng: fixed["pgd"]
    task._eval_jiio = lambda params, images, labels: fixed["jiio"]
    evaluate = jax.jit(task.evaluate)
    metrics = evaluate(params, batch, jax.random.key(0))
    again = evaluate(params, batch, jax.random.key(1))
    for name, value in metrics.items():
        assert value.shape == (16,), name
        np.testing.assert_array_equal(value, again[name], err_msg=name)  # no dropout draw

    @jax.jit
    def manual(params, images, key):
        eval_logits = task.model(params, images)[0]  # z solved from 0, no dropout
        train_logits = task.model(params, images, dropout_key=key)[0]
        return eval_logits, train_logits

    for prefix, delta in (("clean", None), ("robust", fixed["pgd"]), ("robust", fixed["jiio"])):
        x = images if delta is None else images + delta
        logits, dropped = manual(params, x, jax.random.key(2))
        assert float(jnp.max(jnp.abs(logits - dropped))) > 1e-3  # dropout would change them
        suffix = "" if delta is None else "_pgd" if delta is fixed["pgd"] else "_jiio"
        acc = (jnp.argmax(logits, -1) == labels).astype(F32)
        np.testing.assert_array_equal(metrics[f"{prefix}_acc{suffix}"], acc)
        np.testing.assert_allclose(
            metrics[f"{prefix}_ce{suffix}"], cross_entropy(logits, labels), rtol=1e-4, atol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Training losses.
# ---------------------------------------------------------------------------------------------


def _check_loss_outputs(task, loss, metrics, grads):
    assert loss.dtype == F32 and loss.shape == () and np.isfinite(loss)
    expected = {"ce", "acc", "jac_loss", "delta_l2", "epsilon", "attack_steps", "residual"}
    assert expected <= set(metrics)
    for name, value in metrics.items():
        assert value.shape == () and np.isfinite(value), name
    for group in ("injection", "cell", "head"):
        leaves = jax.tree.leaves(grads[group])
        assert all(leaf.dtype == F32 and np.all(np.isfinite(leaf)) for leaf in leaves), group
        assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves) > 0, group


@pytest.mark.parametrize("method", ["jiio", "pgd"])
def test_loss_and_gradients_are_finite(method):
    task = AdversarialTask(small_config(method=method, epsilon_warmup_steps=0))
    batch = digits_batch("train", 8)
    params = task.init_params(jax.random.key(0), batch)
    fn = jax.jit(jax.value_and_grad(lambda p, b, k: task.loss(p, b, k, jnp.int32(0)), has_aux=True))
    (loss, metrics), grads = fn(params, batch, jax.random.key(1))
    _check_loss_outputs(task, loss, metrics, grads)
    # The attacked batch sits on the threat set's boundary (epsilon on the [0, 1] scale).
    eps = task.settings.epsilon
    assert float(metrics["epsilon"]) == pytest.approx(eps)
    assert 0.5 * eps < float(metrics["delta_l2"]) <= eps * (1 + 1e-5)


def test_clean_loss_and_gradients_are_finite(trained):
    task, _, (loss, metrics, grads) = trained  # the fixture trains with method="clean"
    _check_loss_outputs(task, loss, metrics, grads)
    assert float(metrics["delta_l2"]) == 0.0 and float(metrics["attack_steps"]) == 0.0


def test_epsilon_warmup():
    task = AdversarialTask(small_config(epsilon=0.5, epsilon_warmup_steps=4))
    radii = [float(task.train_radius(jnp.int32(step))) for step in range(6)]
    np.testing.assert_allclose(radii, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert float(AdversarialTask(small_config(epsilon_warmup_steps=0)).train_radius(0)) == 1.0


# ---------------------------------------------------------------------------------------------
# Configs through the training loop.
# ---------------------------------------------------------------------------------------------


def _npz(tmp_path, shape: tuple[int, ...]) -> str:
    rng = np.random.default_rng(0)
    path = str(tmp_path / "tiny.npz")
    np.savez(
        path,
        image_train=rng.integers(0, 256, (16, *shape), dtype=np.uint8),
        label_train=rng.integers(0, 10, 16),
        image_test=rng.integers(0, 256, (8, *shape), dtype=np.uint8),
        label_test=np.arange(8) % 10,
    )
    return path


@pytest.mark.parametrize(
    ("name", "method", "shape"),
    # PGD training is covered by test_loss_and_gradients_are_finite; "clean" is the cheapest.
    [("digits_adv", "jiio", None), ("mnist_adv", "clean", (28, 28)), ("cifar_adv", "clean", None)],
)
def test_small_config_trains(tmp_path, name, method, shape):
    config = load_config(name)
    assert config.model.method == "jiio"  # every config trains with JIIO by default
    config.model.method = method
    config.num_train_steps = 2
    if name == "mnist_adv":  # tfds mnist -> a tiny npz of the same shape
        config.data.update(name="npz", path=_npz(tmp_path, shape))
    elif name == "cifar_adv":  # tfds cifar10 -> digits at its size and channels
        config.data.update(name="digits", tfds_name="", path="")
    final = train_and_evaluate(config, str(tmp_path / "run"))
    assert final["step"] == 2
    for key in ("train/loss", "train/grad_norm", "eval/clean_acc", "eval/robust_acc_pgd"):
        assert np.isfinite(final[key]), key
    assert 0 <= final["eval/robust_acc_jiio"] <= 1
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert any(r["split"] == "eval" and "robust_acc_jiio" in r for r in records)
    assert os.listdir(tmp_path / "run" / "images") == ["attack_2.png"]


@pytest.mark.parametrize("arg", [None, "small"])
@pytest.mark.parametrize("name", ["digits_adv", "mnist_adv", "cifar_adv"])
def test_config_schema(name, arg):
    config = load_config(name, arg)
    validate_config(config, num_devices=1, process_count=1)
    data_read_config(config.data)
    task = AdversarialTask(config)
    assert task.settings.arch.image_shape == (config.data.image_size,) * 2 + (config.data.channels,)
    if arg == "small":
        assert config.batch_size <= 8 and config.num_train_steps <= 10
        assert task.settings.arch.state_size <= 4096  # one 4-channel branch at 32x32
        assert config.model.jiio.max_steps <= 10 and config.model.pgd.steps <= 10
    # Command-line style overrides of a locked config, including the typed None placeholders.
    config.lock()
    config.model.method = "pgd"
    config.model.mdeq.final_channels = 16
    config.eval.epsilon = 0.25
    task = AdversarialTask(config)
    assert task.settings.arch.final_channels == 16 and task.eval_radius == 0.5
    with pytest.raises(AttributeError):
        config.model.no_such_field = 1


def test_full_configs_build_the_reference_models():
    mnist = AdversarialTask(load_config("mnist_adv", None))
    assert mnist.settings.arch == MNIST_CLS
    assert (mnist.settings.norm, mnist.settings.epsilon) == ("l2", 1.0)
    assert mnist.radius == 2.0  # epsilon on the [0, 1] scale, images on [-1, 1]
    cifar = AdversarialTask(load_config("cifar_adv", None))
    assert cifar.settings.arch == CIFAR_CLS
    digits = AdversarialTask(load_config("digits_adv", None))
    assert digits.settings.arch.image_shape == (8, 8, 1)
    for name in ("digits_adv", "mnist_adv", "cifar_adv"):
        with pytest.raises(ValueError, match="variant"):
            load_config(name, "large")


# ---------------------------------------------------------------------------------------------
# Config validation.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model.method", "fgsm", "config.model.method"),
        ("model.norm", "l1", "config.model.norm"),
        ("model.epsilon", 0.0, "config.model.epsilon"),
        ("model.epsilon", -1.0, "config.model.epsilon"),
        ("model.pgd.steps", 0, "config.model.pgd.steps"),
        ("model.pgd.step_size", 0.0, "config.model.pgd.step_size"),
        ("model.jiio.step_size", -0.1, "config.model.jiio: `step_size`"),
        ("model.jiio.accelerator", "newton", "config.model.jiio"),
        ("model.jiio.z_damping", 0.0, "config.model.jiio"),
        ("model.clip_pixels", "yes", "config.model.clip_pixels"),
        ("model.arch", "resnet", "config.model.arch"),
        ("eval.epsilon", 0.0, "config.eval.epsilon"),
        ("eval.pgd_steps", 0, "config.eval.pgd_steps"),
        ("eval.jiio_steps", 0, "config.eval.jiio_steps"),
    ],
)
def test_bad_config_values_raise(field, value, message):
    config = small_config()
    section, _, name = field.rpartition(".")
    target = config
    for part in section.split("."):
        target = target[part]
    with target.ignore_type():
        target[name] = value
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        AdversarialTask(config)


def test_unknown_eval_field_raises():
    config = small_config()
    config.eval.pgd_stepz = 3
    with pytest.raises(ValueError, match="config.eval"):
        AdversarialTask(config)
