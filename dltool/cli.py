"""The `dltool` command line.

Each command parses its options, calls the library and prints the result.
Library errors (`DltoolError`) become one line on stderr and exit code 1.
TensorFlow is imported inside the commands that need it, so `dltool --help`,
`dltool templates` and `dltool new` start fast.
"""

import contextlib
import json
import platform
import sys
from pathlib import Path

import click

import dltool
from dltool.errors import DltoolError, DestinationExistsError


@contextlib.contextmanager
def user_errors():
    """Turns dltool's errors into one-line click errors."""
    try:
        yield
    except DltoolError as e:
        raise click.ClickException(str(e)) from None


project_option = click.option(
    "--project", "project_dir", type=click.Path(file_okay=False, path_type=str),
    default=None, help="Project folder (default: the current folder).")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a config value, e.g. --set training.epochs=5 (repeatable).")
skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Drop unusable data files and say how many.")
run_option = click.option(
    "--run", "run_name", default=None, help="Run name under runs/ (default: the newest).")


def _project(project_dir):
    from dltool.project import find_project

    return find_project(project_dir)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dltool.__version__, prog_name="dltool")
def cli():
    """Ready-made Keras 3 / TensorFlow projects: scaffold, train, export, predict.

    \b
    Start with:
      dltool templates                      list the templates
      dltool new image-classifier my-cnn    create a project
      cd my-cnn && dltool train             train it (then evaluate, export, predict)
    """


@cli.command()
def templates():
    """List the project templates."""
    from dltool.scaffold import list_templates

    with user_errors():
        found = list_templates()
    width = max(len(t["name"]) for t in found)
    for template in found:
        click.echo(f"{template['name']:<{width}}  {template['description']}")


@cli.command()
@click.argument("template")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--name", default=None, help="Project name (default: DEST's folder name).")
@click.option("--data", default=None,
              help="Data source for the config: a folder, tfds:NAME or builtin:NAME.")
@click.option("--force", is_flag=True,
              help="Replace an existing DEST (it is kept as DEST.dltool-backup-TIME).")
def new(template, dest, name, data, force):
    """Create a project from TEMPLATE in the new folder DEST."""
    from dltool.scaffold import find_template, render_project

    try:
        result = render_project(template, dest, name=name, data=data, force=force)
        predict_example = find_template(template).get("predict_example", "samples/*.jpg")
    except DestinationExistsError as e:
        raise click.UsageError(str(e)) from None
    except DltoolError as e:
        raise click.ClickException(str(e)) from None
    if result["backup"]:
        click.echo(f"Moved the existing {dest} to {result['backup']}")
    click.echo(f"Created {template} project {result['path'].name} in {result['path']}")
    click.echo(f"Next:\n  cd {dest}\n  dltool train\n  dltool evaluate\n"
               f"  dltool export\n  dltool predict {predict_example}")


@cli.command()
@project_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(project_dir, overrides, as_json):
    """Show versions, devices, and the strategy and precision a run would use."""
    with user_errors():
        runtime_section = _runtime_section(project_dir, overrides)
        from dltool import runtime

        facts = {"dltool": dltool.__version__, "python": platform.python_version(),
                 **runtime.describe(runtime_section)}
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        click.echo(f"{key + ':':<12} {value}")


def _runtime_section(project_dir, overrides):
    """The project's runtime settings; the defaults outside a project."""
    from dltool.config import COMMON_SECTIONS, CONFIG_FILE

    if project_dir is None and not Path(CONFIG_FILE).is_file():
        return {k: f.default for k, f in COMMON_SECTIONS["runtime"].items()}
    return _config(project_dir, overrides)["runtime"]


def _config(project_dir, overrides):
    from dltool.project import load_config

    return load_config(_project(project_dir), overrides)


@cli.command()
@project_option
@set_option
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs to train.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Global batch size.")
@click.option("--strategy", type=click.Choice(["auto", "default", "mirrored",
                                               "multi-worker", "tpu"]), default=None)
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_float16",
                                                "mixed_bfloat16"]), default=None)
@click.option("--fresh", is_flag=True, help="Start a new run instead of resuming one.")
@skip_bad_option
def train(project_dir, overrides, epochs, batch_size, strategy, precision, fresh, skip_bad):
    """Train the project's model; run it again to resume an interrupted run."""
    flags = {"training.epochs": epochs, "training.batch_size": batch_size,
             "runtime.strategy": strategy, "runtime.precision": precision}
    overrides = (*overrides, *(f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None))
    with user_errors():
        project = _project(project_dir)
        from dltool.training import train as run_training

        run_training(project, overrides, skip_bad=skip_bad, fresh=fresh, echo=click.echo)


@cli.command()
@project_option
@run_option
@click.option("--split", type=click.Choice(["test", "val"]), default="test",
              help="Split to evaluate on.")
@skip_bad_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate(project_dir, run_name, split, skip_bad, as_json):
    """Evaluate the best weights of a run: loss, accuracy, per-class figures
    (classifiers); BLEU and chrF, with sample translations (translator)."""
    with user_errors():
        project = _project(project_dir)
        from dltool.evaluation import evaluate as run_evaluation

        result = run_evaluation(project, run_name, split, skip_bad=skip_bad)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"Run {result['run']}, {split} split, {result['examples']} examples")
    if "bleu" in result:
        decoding = result["decoding"]
        how = "greedy" if decoding["method"] == "greedy" else \
            f"beam search, width {decoding['beam_width']}"
        click.echo(f"BLEU  {result['bleu']:.2f}  ({result['signature']['bleu']})")
        click.echo(f"chrF  {result['chrf']:.2f}  ({result['signature']['chrf']})")
        click.echo(f"decoding: {how}; translations beside the references in "
                   f"{result['translations_file']}")
        return
    click.echo(f"loss      {result['loss']:.4f}\naccuracy  {result['accuracy']:.4f}")
    if "per_class" in result:
        width = max(len(c["name"]) for c in result["per_class"])
        click.echo(f"{'class':<{width}}  precision  recall  support")
        for c in result["per_class"]:
            click.echo(f"{c['name']:<{width}}  {c['precision']:>9.3f}  {c['recall']:>6.3f}"
                       f"  {c['support']:>7}")


@cli.command()
@project_option
@run_option
@click.option("--name", default=None, help="Model name under saved_models/.")
def export(project_dir, run_name, name):
    """Export a run as saved_models/NAME/VERSION (raw input in, labels out)."""
    with user_errors():
        project = _project(project_dir)
        from dltool.export import export as run_export

        result = run_export(project, run_name, name)
    click.echo(f"Exported run {result['run']} as {result['path']} "
               f"(SavedModel + model.keras, version {result['version']})")


@cli.command()
@click.argument("inputs", nargs=-1)
@click.option("--file", "input_file", type=click.Path(dir_okay=False, path_type=str),
              default=None, help="Read more inputs from a UTF-8 file, one per line.")
@project_option
@click.option("--model", "model_path", default=None,
              help="SavedModel folder or .keras file (default: the newest export).")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Classes to show per input (default: export.top_k).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(inputs, input_file, project_dir, model_path, top_k, as_json):
    """Predict INPUTS (image files, or texts for text templates) with an exported model.

    For a translator, each input is a sentence and its translation is printed.
    """
    if not inputs and input_file is None:
        raise click.UsageError("give INPUTS or --file PATH")
    with user_errors():
        if input_file is not None:
            from dltool.data.text import read_input_lines

            inputs = (*inputs, *read_input_lines(input_file))
        project = None
        if model_path is None or project_dir is not None:
            project = _project(project_dir)
        if top_k is None:
            top_k = _config(project, ())["export"]["top_k"] if project else 3
        from dltool.predict import predict as run_predict

        source, results = run_predict(project, list(inputs), model_path=model_path,
                                      top_k=top_k)
    if results and isinstance(results[0][1], dict):  # translations
        _print_translations(source, results, as_json)
        return
    if as_json:
        click.echo(json.dumps([{"input": i, "top": [{"label": lbl, "probability": p}
                                                    for lbl, p in top]}
                               for i, top in results], indent=2))
        return
    click.echo(f"Model: {source}")
    for item, top in results:
        shown = ", ".join(f"{label} {probability:.3f}" for label, probability in top)
        click.echo(f"{item}: {shown}")


def _print_translations(source, results, as_json):
    for item, out in results:
        if out["truncated"]:
            click.echo(f"Warning: {item[:40]!r}... is longer than the model's maximum "
                       "length; only its beginning was translated", err=True)
    if as_json:
        click.echo(json.dumps([{"input": i, **out} for i, out in results], indent=2,
                              ensure_ascii=False))
        return
    click.echo(f"Model: {source}")
    for item, out in results:
        click.echo(f"{item} -> {out['translation']}")


def main():
    """Entry point of the `dltool` console script."""
    cli(prog_name="dltool")


if __name__ == "__main__":
    sys.exit(main())
