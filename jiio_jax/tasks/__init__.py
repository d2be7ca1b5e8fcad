"""Tasks driven by ``jiio_jax.train``: the interface, the registry and the built-in tasks."""

# Importing a task module registers it (``@register_task``).
from jiio_jax.tasks import adversarial as adversarial
from jiio_jax.tasks import generative as generative
from jiio_jax.tasks import meta as meta
from jiio_jax.tasks.base import Task, get_task, register_task

__all__ = ["Task", "get_task", "register_task"]
