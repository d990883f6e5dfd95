"""The templates dltool ships: `templates/<name>/template.toml`, the one registry.

A template's `template.toml` says what it is: `name`, `description`, the
`task` class (`"module:Class"`, see `dltool.tasks.task_for`), its config
schema (`[config.<section>.<key>]`, see `dltool.core.config`) and an
optional `predict_example`; its `project/` folder is what `dltool new`
renders (`dltool.core.scaffold`).

This module never imports TensorFlow.
"""

import tomllib
from pathlib import Path

from dltool.core.errors import TemplateError

TEMPLATE_META_FILE = "template.toml"
# The folder of the templates root holding the partials every template may
# include (it has no template.toml, so it is not a template).
SHARED_DIR = "_shared"


def templates_root():
    """Returns the folder that holds the templates.

    An installed wheel carries them as `dltool/templates`; a source checkout
    keeps them in the top-level `templates/` folder.
    """
    here = Path(__file__).resolve().parents[1]  # the dltool package
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise TemplateError("dltool's templates are missing from this installation")


def list_templates():
    """Lists the available templates.

    Returns:
        A list of dicts, sorted by name, with the keys of each template's
        `template.toml` (`name`, `description`, `task`, `config`, ...),
        `path`, and `default_data`: the data source `dltool new` writes,
        the default of `data.source` in the template's `[config]` table.
    """
    found = []
    for meta_path in sorted(templates_root().glob(f"*/{TEMPLATE_META_FILE}")):
        try:
            with open(meta_path, "rb") as f:
                meta = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise TemplateError(f"{meta_path}: invalid TOML: {e}") from e
        source = meta.get("config", {}).get("data", {}).get("source", {})
        if isinstance(source, dict) and "default" in source:
            meta.setdefault("default_data", source["default"])
        found.append({**meta, "path": meta_path.parent})
    return found


def find_template(name):
    """Returns the template called `name`.

    Raises:
        TemplateError: if there is no such template (the message lists them).
    """
    templates = list_templates()
    for template in templates:
        if template["name"] == name:
            return template
    names = ", ".join(t["name"] for t in templates)
    raise TemplateError(f"unknown template {name!r}; available: {names}")
