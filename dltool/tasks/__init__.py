"""What differs between templates, one `Task` class per template.

`Task` (`dltool.tasks.base`) states the contract; `ClassifierTask`
(`dltool.tasks.classifier`) holds what the image and sentiment classifiers
share. A template's `template.toml` names its class
(`task = "dltool.tasks.image_classifier:ImageClassifierTask"`): that is the
one registry, read by `task_for`.

Tasks may import `dltool.core`, `dltool._tf`, `dltool.data` and
`dltool.report`, never `dltool.engine`: the engine calls tasks, not the
reverse.
"""

import functools
import importlib

from dltool.core import templates
from dltool.core.errors import ConfigError, TemplateError
from dltool.tasks.base import Task

__all__ = ["Task", "task_for"]


@functools.cache
def task_for(template):
    """Returns the task of a template: one instance of the class its
    `template.toml` names, the same on every call.

    Args:
        template: The template's name (`config.template`, `run.template`).

    Raises:
        ConfigError: if there is no such template.
    """
    try:
        spec = templates.find_template(template)
    except TemplateError:
        names = ", ".join(t["name"] for t in templates.list_templates())
        raise ConfigError(f"project.template must be one of {names}; "
                          f"got {template!r}") from None
    module_name, _, class_name = spec["task"].partition(":")
    task_class = getattr(importlib.import_module(module_name), class_name)
    return task_class(spec)
