"""Render a project template into a new folder.

Rendering follows copier's safety rules: a sandboxed Jinja2 environment with
`StrictUndefined`, only plain values in the context, only `*.jinja` files
rendered (the rest copied byte for byte), no symlinks, every output path kept
inside the destination, output written to a temporary sibling folder and
renamed into place, and an existing destination refused. Besides its own
files, a template's `*.jinja` files may include the partials of the
`templates/_shared/` folder (`{% include "_shared/NAME" %}`; nothing else
outside the template's `project/` folder), and see the template's config
defaults as `defaults` (section to key to value: `config.defaults` of
`config.template_schema`), with the filter `toml` that writes a value as a TOML
literal: `epochs = {{ defaults.training.epochs | toml }}`, and the filter
`code` that writes one line as a Markdown code span (`{{ data_source | toml |
code }}`: what the user typed, escaped, can break neither file). The rendered
`config.toml` is read back and validated before the folder is renamed into
place. Staging folders that killed runs of `dltool new` left in the parent
folder are deleted first (`remove_leftovers`).

This module never imports TensorFlow.
"""

import os
import re
import shutil
import time
from pathlib import Path

import jinja2
import tomli_w
from jinja2.sandbox import ImmutableSandboxedEnvironment

import dltool
from dltool.core import config as config_lib
from dltool.core import files, templates
from dltool.core.errors import DestinationExistsError, DltoolError, TemplateError

ANSWERS_FILE = ".dltool-answers.toml"
# `dltool new` before the staging of `dltool.core.files` rendered into
# `.dltool-tmp-<random>` folders; one unchanged this long is a leftover.
_OLD_STAGING_PREFIX = ".dltool-tmp-"
_OLD_STAGING_SECONDS = 3600
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_MAX_RENDERED_BYTES = 1_000_000
_SKIPPED_NAMES = {"__pycache__", ".pytest_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def validate_project_name(name, what="project name"):
    """Checks that `name` is a safe, identifier-like name.

    Args:
        name: The name to check.
        what: What the name names, for the error message.

    Raises:
        TemplateError: if the name has a path separator, `..`, or characters
            other than letters, digits, `_` and `-`, or does not start with a
            letter.
    """
    if not _NAME_PATTERN.match(name or ""):
        raise TemplateError(
            f"invalid {what} {name!r}: use a letter followed by letters, "
            "digits, '_' or '-' (at most 64 characters, no path separators)"
        )
    return name


def _data_source(data, dest):
    """`--data` as the project's config holds it.

    A project reads a relative `data.source` from its own folder, but the
    user gives `--data` from where they type it (`dltool new proj --data
    photos/`): a path that exists from there is written relative to the
    project (`../photos`), so the project still finds its data when both are
    moved together. A `tfds:`/`builtin:` source, or a path that does not
    exist, is written as given (`dltool train` then names it).
    """
    path = Path(data)
    if path.is_absolute() or not path.exists():  # also tfds:NAME, builtin:NAME
        return data
    return os.path.relpath(path.absolute(), dest)


def render_project(template_name, dest, *, name=None, data=None, force=False):
    """Renders a template into a new project folder.

    Args:
        template_name: Name of the template (see `list_templates`).
        dest: Path of the project folder to create.
        name: Project name; defaults to the last component of `dest`.
        data: Data source written into the project's config; defaults to the
            template's embedded sample.
        force: Replace an existing `dest`. The existing folder is not merged
            or deleted: it is renamed to a timestamped backup beside it.

    Returns:
        A dict with `path` (the new project) and `backup` (where an existing
        destination was moved, or None).

    Raises:
        TemplateError: unknown template, invalid name, unsafe template, a
            rendered config that does not validate.
        DestinationExistsError: `dest` exists and `force` is false.
        StorageError: the parent folder cannot be written (read-only, full,
            not ours).
    """
    template = templates.find_template(template_name)
    dest = Path(dest).absolute()
    name = validate_project_name(name if name is not None else dest.name)
    if os.path.lexists(dest) and not force:
        raise DestinationExistsError(
            f"destination {dest} already exists; choose another or pass --force "
            "(the existing folder is then kept as a backup)"
        )
    if not dest.parent.is_dir():
        raise TemplateError(f"parent folder {dest.parent} does not exist")

    context = {
        "project_name": name,
        "template": template["name"],
        "dltool_version": dltool.__version__,
        "distribution": dltool.DISTRIBUTION,
        "data_source": _data_source(data, dest) if data is not None else
                       template["default_data"],
        "defaults": config_lib.defaults(config_lib.template_schema(template)),
    }
    files.check_writable(dest.parent)  # e.g. a folder of another user's: one line
    remove_leftovers(dest.parent)
    try:
        with files.storage_errors(dest), files.staging_folder(dest) as staging:
            _write_answers(staging, context)  # first: it marks the folder as ours
            _render_tree(template["path"] / "project", staging, context,
                         shared_root=template["path"].parent / templates.SHARED_DIR)
            _check_config(staging, dest)
            backup = _move_aside(dest, force)
    except OSError as e:  # the rename: `dest` appeared meanwhile
        raise DestinationExistsError(f"could not create {dest}: {e.strerror}") from e
    return {"path": dest, "backup": backup}


def remove_leftovers(parent):
    """Deletes the staging folders that killed `dltool new`s left in `parent`.

    A staging folder `.tmp-<pid>-NAME` is deleted once its process is gone,
    and only if it is empty or holds the answers file (written first), so a
    folder of another program's is never touched. An old-style
    `.dltool-tmp-*` folder has no process id: it is deleted once nothing
    changed in it for an hour (rendering takes about a second).

    Returns:
        The number removed.
    """
    removed = files.remove_leftovers(parent, recursive=False, accept=_is_staging)
    for path in Path(parent).glob(f"{_OLD_STAGING_PREFIX}*"):
        try:
            stale = time.time() - path.lstat().st_mtime > _OLD_STAGING_SECONDS
        except OSError:
            continue
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _is_staging(path):
    return path.is_dir() and not path.is_symlink() and (
        (path / ANSWERS_FILE).is_file() or not any(path.iterdir()))


def _check_config(root, dest):
    """Reads the rendered `config.toml` back as every later command will.

    A template without a `config.toml` is not checked.

    Raises:
        TemplateError: if the config is not valid TOML or not a valid config.
    """
    path = root / config_lib.CONFIG_FILE
    if not path.is_file():
        return
    try:
        config_lib.load_config(path)
    except DltoolError as e:
        message = str(e).replace(str(root), str(dest))  # not the staging folder's name
        raise TemplateError(f"the rendered config is not valid, so {dest} was not "
                            f"created: {message}") from e


def _environment(source_root, shared_root=None):
    """The sandboxed environment that renders the files of `source_root`.

    Templates load from `source_root`, and as `_shared/NAME` from
    `shared_root` (by default the templates root's `_shared/` folder).
    """
    if shared_root is None:
        shared_root = templates.templates_root() / templates.SHARED_DIR
    _refuse_symlinks(shared_root)
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.ChoiceLoader([
            jinja2.FileSystemLoader(str(source_root)),
            jinja2.PrefixLoader({templates.SHARED_DIR: jinja2.FileSystemLoader(str(shared_root))}),
        ]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["toml"] = _toml_literal
    env.filters["code"] = _markdown_code
    return env


def _refuse_symlinks(folder):
    if folder.is_symlink():
        raise TemplateError(f"template folder {folder.name} is a symlink; refused")
    if folder.is_dir():
        for path in folder.rglob("*"):
            if path.is_symlink():
                raise TemplateError(f"template file {path.relative_to(folder.parent)} "
                                    "is a symlink; refused")


def _toml_literal(value):
    """The filter `toml`: `value` (a string, number, boolean or list of them)
    as a TOML literal, e.g. `"auto"`, `0.1`, `false`, `[32, 32]`."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if not isinstance(value, (str, int, float, bool)):
        raise jinja2.TemplateRuntimeError(
            f"the toml filter writes strings, numbers, booleans and lists; got {value!r}")
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _markdown_code(text):
    """The filter `code`: one line of text as a Markdown code span that shows
    it exactly, e.g. `{{ data_source | toml | code }}`.

    The fence has more backticks than any run of them in `text`, with a space
    inside when `text` starts or ends with one.

    Raises:
        TemplateRuntimeError: if `text` holds a line break, which would end
            the span (pass it through `toml` first, which escapes them).
    """
    text = str(text)
    if "\n" in text or "\r" in text:
        raise jinja2.TemplateRuntimeError(f"the code filter takes one line; got {text!r}")
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _render_tree(source_root, target_root, context, shared_root=None):
    """Renders `*.jinja` files and copies the rest from source to target."""
    env = _environment(source_root, shared_root)
    for source in sorted(source_root.rglob("*")):
        relative = source.relative_to(source_root)
        if _is_skipped(relative):
            continue
        if source.is_symlink():
            raise TemplateError(f"template file {relative} is a symlink; refused")
        target = _contained(target_root, relative)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.suffix == ".jinja":
            target = target.with_suffix("")
            target.write_text(_render_file(env, relative, context), encoding="utf-8")
        else:
            shutil.copyfile(source, target)


def _is_skipped(relative):
    return bool(_SKIPPED_NAMES.intersection(relative.parts)) or (
        relative.suffix in _SKIPPED_SUFFIXES
    )


def _render_file(env, relative, context):
    try:
        text = env.get_template(relative.as_posix()).render(context)
    except jinja2.TemplateError as e:
        raise TemplateError(f"template file {relative} failed to render: {e}") from e
    if len(text.encode("utf-8")) > _MAX_RENDERED_BYTES:
        raise TemplateError(f"template file {relative} renders to more than 1 MB")
    return text


def _contained(root, relative):
    """Joins `relative` to `root`, refusing anything that escapes `root`."""
    if relative.is_absolute() or ".." in relative.parts or "\\" in str(relative):
        raise TemplateError(f"template path {relative} escapes the destination")
    target = root / relative
    if not target.resolve().is_relative_to(root.resolve()):
        raise TemplateError(f"template path {relative} escapes the destination")
    return target


def _write_answers(root, context):
    answers = {"template": context["template"],
               "distribution": context["distribution"],
               "dltool_version": context["dltool_version"],
               "options": {"project_name": context["project_name"],
                           "data_source": context["data_source"]}}
    header = "# Written by `dltool new`: the template and options this project came from.\n"
    (root / ANSWERS_FILE).write_text(header + tomli_w.dumps(answers), encoding="utf-8")


def _move_aside(dest, force):
    """Renames an existing `dest` to a timestamped backup; returns it or None."""
    if not os.path.lexists(dest):
        return None
    if not force:
        raise DestinationExistsError(f"destination {dest} appeared while rendering")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = dest.with_name(f"{dest.name}.dltool-backup-{stamp}")
    os.rename(dest, backup)
    return backup
