"""`dltool new`: safe rendering, refusals, nothing half-written."""

import os
import re
import stat
import tomllib

import jinja2
import pytest

from conftest import invoke
from dltool.core import scaffold, templates
from dltool.core.errors import TemplateError


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_new_renders_project(runner, tmp_path):
    result = invoke(runner, "new", "image-classifier", tmp_path / "cats")
    assert result.exit_code == 0, result.output
    project = tmp_path / "cats"
    for name in ("config.toml", "model.py", "README.md", "tests/test_project.py",
                 ".dltool-answers.toml", "samples/cat.jpg"):
        assert (project / name).is_file(), name
    assert not list(project.rglob("*.jinja"))
    for path in project.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".toml", ".md"):
            text = path.read_text()
            assert "{{" not in text and "{%" not in text, path
    config = tomllib.loads((project / "config.toml").read_text())
    assert config["project"] == {"name": "cats", "template": "image-classifier"}
    answers = tomllib.loads((project / ".dltool-answers.toml").read_text())
    assert answers["template"] == "image-classifier"
    assert answers["options"]["project_name"] == "cats"
    assert "dltool_version" in answers
    assert stat.S_IMODE(project.stat().st_mode) & 0o755 == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dltool-tmp-")]


def test_new_records_data_option(runner, tmp_path):
    result = invoke(runner, "new", "image-classifier", tmp_path / "p", "--data", "tfds:cifar10")
    assert result.exit_code == 0
    config = tomllib.loads((tmp_path / "p" / "config.toml").read_text())
    assert config["data"]["source"] == "tfds:cifar10"


def test_unknown_template_lists_available(runner, tmp_path):
    result = invoke(runner, "new", "nope", tmp_path / "p")
    assert result.exit_code == 1
    assert "unknown template 'nope'; available: image-classifier" in result.output
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["nonempty", "empty", "file", "symlink", "dangling"])
def test_existing_destination_refused_and_untouched(runner, tmp_path, kind):
    dest = tmp_path / "dest"
    if kind == "nonempty":
        dest.mkdir()
        (dest / "mine.txt").write_text("keep me")
    elif kind == "empty":
        dest.mkdir()
    elif kind == "file":
        dest.write_text("keep me")
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        dest.symlink_to(tmp_path / "elsewhere")
    else:
        dest.symlink_to(tmp_path / "missing")
    before = _tree(tmp_path)
    result = invoke(runner, "new", "image-classifier", dest)
    assert result.exit_code == 2
    assert "already exists" in result.output
    assert _tree(tmp_path) == before


def test_force_keeps_the_old_folder_as_backup(runner, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    result = invoke(runner, "new", "image-classifier", dest, "--force")
    assert result.exit_code == 0, result.output
    backups = list(tmp_path.glob("dest.dltool-backup-*"))
    assert len(backups) == 1 and (backups[0] / "mine.txt").read_text() == "keep me"
    assert (dest / "model.py").is_file() and not (dest / "mine.txt").exists()


@pytest.mark.parametrize("name", ["..", "a/b", "../evil", "1abc", "", "-x", "a b", "x" * 65,
                                  "caf\u00e9", "a\\b", "a\x00b"])
def test_invalid_project_names_refused(runner, tmp_path, name):
    result = invoke(runner, "new", "image-classifier", tmp_path / "ok", "--name", name)
    assert result.exit_code == 1
    assert "invalid project name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_dest_basename_is_validated(runner, tmp_path):
    result = invoke(runner, "new", "image-classifier", tmp_path / "bad name")
    assert result.exit_code == 1 and "invalid project name" in result.output


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = scaffold._render_file

    def failing(env, relative, context):
        calls["n"] += 1
        if calls["n"] == 2:
            raise TemplateError("injected failure")
        return real(env, relative, context)

    monkeypatch.setattr(scaffold, "_render_file", failing)
    with pytest.raises(TemplateError, match="injected"):
        scaffold.render_project("image-classifier", tmp_path / "p")
    assert list(tmp_path.iterdir()) == []


def _fake_template(tmp_path, files):
    root = tmp_path / "templates"
    project = root / "evil" / "project"
    project.mkdir(parents=True)
    (root / "evil" / "template.toml").write_text(
        'name = "evil"\ndescription = "test"\ndefault_data = "x"\n')
    for name, text in files.items():
        (project / name).write_text(text)
    return root

def _assert_refused(monkeypatch, tmp_path, root, match=None):
    """Rendering the fake template `evil` under `root` fails and writes nothing."""
    monkeypatch.setattr(templates, "templates_root", lambda: root)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TemplateError, match=match):
        scaffold.render_project("evil", out / "p")
    assert list(out.iterdir()) == []



@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ project_name.__class__.__base__.__subclasses__() }}",
    "{{ ('{0.__class__.__mro__}'|attr('format'))(project_name) }}",
    "{{ '{0.__class__.__init__.__globals__}'.format(project_name) }}",
    "{{ undefined_variable }}",
])
def test_template_payloads_are_refused(tmp_path, monkeypatch, payload):
    monkeypatch.setattr(templates, "templates_root",
                        lambda: _fake_template(tmp_path, {"x.txt.jinja": payload}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TemplateError):
        scaffold.render_project("evil", out / "p")
    assert list(out.iterdir()) == []


def test_symlink_in_template_refused(tmp_path, monkeypatch):
    root = _fake_template(tmp_path, {"a.txt": "a"})
    os.symlink("/etc/passwd", root / "evil" / "project" / "link")
    _assert_refused(monkeypatch, tmp_path, root, "symlink")


def test_contained_refuses_escaping_paths(tmp_path):
    from pathlib import PurePosixPath
    for bad in ("../x", "a/../../x", "/abs/x"):
        with pytest.raises(TemplateError, match="escapes"):
            scaffold._contained(tmp_path, PurePosixPath(bad))


def test_environment_is_sandboxed_and_strict(tmp_path):
    env = scaffold._environment(tmp_path)
    assert isinstance(env, jinja2.sandbox.ImmutableSandboxedEnvironment)
    assert env.undefined is jinja2.StrictUndefined


# ---- config.toml: every default from the schema, the shared sections from one partial ----

TEMPLATES = ("image-classifier", "sentiment", "translator")
SHARED_SECTIONS = ("project", "training", "tune", "runtime", "export")
# Values the sentiment template writes for its embedded sample instead of the
# schema's defaults (empty: every label of the data).
SAMPLE_VALUES = {("sentiment", "builtin:sst2"): {"data.labels": "0,1",
                                                 "data.label_names": "negative,positive"}}


def _rendered_config(tmp_path, template, data=None):
    dest = tmp_path / f"{template}-{'default' if data is None else 'data'}"
    scaffold.render_project(template, dest, name="proj", data=data)
    return tomllib.loads((dest / "config.toml").read_text())


@pytest.mark.parametrize("data", [None, "some/folder"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_rendered_config_shows_the_schema_defaults(tmp_path, template, data):
    from dltool.core import config as config_lib

    rendered = _rendered_config(tmp_path, template, data)
    schema = config_lib.schema_for(template)
    source = data if data is not None else templates.find_template(template)["default_data"]
    expected = {**{f"{s}.{k}": f.default for s, fields in schema.items()
                   for k, f in fields.items()},
                "project.name": "proj", "project.template": template, "data.source": source,
                **SAMPLE_VALUES.get((template, source), {})}
    shown = {f"{s}.{k}": v for s, keys in rendered.items() if s not in ("model", "search")
             for k, v in keys.items()}
    assert set(shown) == set(expected)  # every schema key, and nothing else
    for key, value in shown.items():
        assert (value, type(value)) == (expected[key], type(expected[key])), key
    assert rendered["model"] and rendered["search"]
    assert config_lib.validate(rendered)


@pytest.mark.parametrize("template", TEMPLATES)
def test_rendered_config_has_every_shared_key(tmp_path, template):
    from dltool.core import config as config_lib

    rendered = _rendered_config(tmp_path, template)
    for section in SHARED_SECTIONS:
        assert set(rendered[section]) == set(config_lib.COMMON_SECTIONS[section]), section
    own = (templates.find_template(template)["path"] / "project" / "config.toml.jinja").read_text()
    for section in SHARED_SECTIONS[1:]:  # written once, in the shared partial
        assert not re.search(rf"^\[{section}\]", own, re.MULTILINE), section
    assert '{% include "_shared/config.toml.jinja" %}' in own


def test_template_defaults_of_shared_keys(tmp_path):
    assert _rendered_config(tmp_path, "image-classifier")["training"]["epochs"] == "auto"
    translator = _rendered_config(tmp_path, "translator")
    assert translator["training"]["monitor"] == "val_loss"
    assert translator["runtime"]["cpu_devices"] == 1
    assert translator["training"]["deterministic"] is False
    assert translator["training"]["include_validation"] is False


def test_shared_folder_is_not_a_template():
    names = [t["name"] for t in templates.list_templates()]
    assert names == sorted(TEMPLATES)
    assert (templates.templates_root() / templates.SHARED_DIR / "config.toml.jinja").is_file()
    assert templates.find_template("image-classifier")["default_data"] == "builtin:cifar10"


@pytest.mark.parametrize("value, literal", [
    ("auto", '"auto"'), ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'), (0.1, "0.1"),
    (0.0, "0.0"), (44, "44"), (False, "false"), ([32, 32], "[32, 32]"), ("", '""')])
def test_toml_filter(value, literal):
    assert scaffold._toml_literal(value) == literal
    assert tomllib.loads(f"v = {literal}")["v"] == value


@pytest.mark.parametrize("config, message", [
    ('[config.data]\nsize = {default = {a = 1}}', "its default must be a string"),
    ('[config.data]\nsize = {default = 1, step = 2}', "may hold only default, choices"),
    ('[config.data]\nsize = {minimum = 2}', "config.data.size must be a table with a default"),
    ('[config.data]\nsize = {default = 0, minimum = 1}', "the default of config.data.size: "
                                                          "data.size must be an integer >= 1"),
    ('[config.training]\nepochz = {default = 3}', "a template may only set the default"),
    ('[config.training]\nepochs = {default = 3, minimum = 0}', "may only set the default"),
    ('[config.training]\nepochs = {default = "3"}', "training.epochs must be an integer"),
    ('[config.model]\nunits = {default = 3}', "neither model nor search"),
])
def test_invalid_config_table_in_template_toml(tmp_path, monkeypatch, config, message):
    root = _fake_template(tmp_path, {"x.txt.jinja": "x"})
    meta = root / "evil" / "template.toml"
    meta.write_text(meta.read_text() + config + "\n")
    _assert_refused(monkeypatch, tmp_path, root,
                    "template.toml: .*" + message.replace("(", r"\("))


@pytest.mark.parametrize("payload", [
    '{% include "../template.toml" %}',
    '{% include "_shared/../../evil/template.toml" %}',
    '{% include "/etc/passwd" %}',
    '{% include "_shared/missing.jinja" %}',
])
def test_includes_stay_in_the_template_and_shared_folder(tmp_path, monkeypatch, payload):
    root = _fake_template(tmp_path, {"x.txt.jinja": payload})
    (root / templates.SHARED_DIR).mkdir()
    _assert_refused(monkeypatch, tmp_path, root, "failed to render")


def test_shared_partial_renders_in_a_fake_template(tmp_path, monkeypatch):
    root = _fake_template(tmp_path, {"x.txt.jinja": '{% include "_shared/p.jinja" %}'})
    (root / templates.SHARED_DIR).mkdir()
    (root / templates.SHARED_DIR / "p.jinja").write_text(
        "epochs = {{ defaults.training.epochs | toml }}\n")
    monkeypatch.setattr(templates, "templates_root", lambda: root)
    scaffold.render_project("evil", tmp_path / "p")
    assert (tmp_path / "p" / "x.txt").read_text() == "epochs = 10\n"


def test_symlink_in_shared_folder_refused(tmp_path, monkeypatch):
    root = _fake_template(tmp_path, {"a.txt": "a"})
    (root / templates.SHARED_DIR).mkdir()
    os.symlink("/etc/passwd", root / templates.SHARED_DIR / "link")
    _assert_refused(monkeypatch, tmp_path, root, "symlink")


# ---- what the user types is encoded for each file it lands in (issue 18, point 6) ----

HOSTILE_DATA = [
    "C:\\data\\new",
    'a"b',
    "a\nb",
    'x"\n[model]\nfilters = 1\n#',      # tries to end the string and add a table
    "it's `code` and ``more``",
    "caf\u00e9/\u65e5\u672c\t\x7f",
]


@pytest.mark.parametrize("data", HOSTILE_DATA)
def test_data_option_reads_back_exactly(runner, tmp_path, data):
    from dltool.core import project

    result = invoke(runner, "new", "image-classifier", tmp_path / "proj", "--data", data)
    assert result.exit_code == 0, result.output
    config = project.load_config(tmp_path / "proj")
    assert config["data"]["source"] == data
    default = _rendered_config(tmp_path, "image-classifier")
    assert config["model"] == default["model"]  # no table slipped in
    answers = tomllib.loads((tmp_path / "proj" / scaffold.ANSWERS_FILE).read_text())
    assert answers["options"]["data_source"] == data


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("data", HOSTILE_DATA)
def test_readme_shows_the_data_source_as_one_code_span(tmp_path, template, data):
    scaffold.render_project(template, tmp_path / "proj", data=data)
    lines = (tmp_path / "proj" / "README.md").read_text(encoding="utf-8").splitlines()
    line = next(line for line in lines if line.startswith("`data.source` in `config.toml` is"))
    span = re.match(r"`data\.source` in `config\.toml` is (`+)(.*?)\1(?!`)", line)
    assert span, line
    shown = span.group(2)
    if shown.startswith(" ") and shown.endswith(" ") and shown.strip(" "):
        shown = shown[1:-1]  # CommonMark strips one space from each side
    assert tomllib.loads(f"v = {shown}")["v"] == data  # the TOML literal of config.toml


@pytest.mark.parametrize("text, span", [
    ("plain", "`plain`"), ("a`b", "``a`b``"), ("``x", "``` ``x ```"), ("x`", "`` x` ``")])
def test_code_filter(text, span):
    assert scaffold._markdown_code(text) == span


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "a\r\nb"])
def test_code_filter_refuses_line_breaks(text):
    with pytest.raises(jinja2.TemplateRuntimeError, match="one line"):
        scaffold._markdown_code(text)


def test_rendered_config_is_validated_before_the_rename(tmp_path, monkeypatch):
    root = _fake_template(tmp_path, {
        "config.toml.jinja": '[project]\nname = "{{ project_name }}"\ntemplate = "evil"\n'
                             '[export]\nname = "{{ data_source }}"\n'})  # not encoded
    monkeypatch.setattr(templates, "templates_root", lambda: root)
    scaffold.render_project("evil", tmp_path / "good", data="fine")
    assert (tmp_path / "good" / "config.toml").is_file()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TemplateError, match=r"rendered config is not valid, so .*p was not "
                                            r"created: .*p/config.toml: invalid TOML"):
        scaffold.render_project("evil", out / "p", data='a"b')
    assert list(out.iterdir()) == []


def test_rendered_config_with_an_unknown_key_is_refused(tmp_path, monkeypatch):
    root = _fake_template(tmp_path, {
        "config.toml.jinja": '[project]\nname = "p"\ntemplate = "evil"\n[training]\nepochz = 3\n'})
    monkeypatch.setattr(templates, "templates_root", lambda: root)
    with pytest.raises(TemplateError, match="unknown config key 'training.epochz'"):
        scaffold.render_project("evil", tmp_path / "p")
    assert list(tmp_path.glob("p*")) == [] and list(tmp_path.glob(".tmp-*")) == []


@pytest.mark.parametrize("folder", ["my projects", "it's", "a;b", "$HOME"])
def test_next_hint_quotes_the_destination_for_the_shell(runner, tmp_path, folder):
    import subprocess

    (tmp_path / folder).mkdir()
    dest = tmp_path / folder / "proj"
    result = invoke(runner, "new", "image-classifier", dest)
    assert result.exit_code == 0, result.output
    cd_line = next(line for line in result.output.splitlines() if line.strip().startswith("cd "))
    shell = subprocess.run(["bash", "-c", f"{cd_line.strip()} && pwd"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert shell.stdout.strip() == str(dest), shell.stderr
