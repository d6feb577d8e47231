"""Task registry: ``get_task(name)`` and ``TASKS``; specs in :mod:`engrain.tasks.registry`."""

from engrain.errors import unknown
from engrain.tasks.loaders import Example, load_split
from engrain.tasks.registry import TASKS
from engrain.tasks.spec import OODPartner, PromptFormat, TaskSpec


def get_task(name: str) -> TaskSpec:
    """A built-in task by name, or your own declared in a YAML file (engrain.tasks.user)."""
    from engrain.tasks.user import get_user_task, is_task_file

    if is_task_file(name):
        return get_user_task(name)
    if name not in TASKS:
        from engrain.tasks.documents import DOC_TASKS

        raise unknown("task", name, [*TASKS, *DOC_TASKS])
    return TASKS[name]


__all__ = ["TASKS", "Example", "OODPartner", "PromptFormat", "TaskSpec", "get_task", "load_split"]
