"""The `dltool` command line.

Each command parses its options, calls the library and prints the result;
what a result looks like (text, `--quiet`, `--json`) is the task's to say
(`dltool.tasks.Task`), so no command knows a template. Library errors
(`DltoolError`) become one line on stderr and exit code 1. The project a
command works on (`--project`, or the current folder) is a `ProjectContext`
that `pass_project` hands to the command.

dltool modules are imported inside the commands that need them (the one
place in dltool that does so), so `dltool --help`, `templates`, `new`,
`completion` and `runs` never import TensorFlow (`runs` reads the facts a
run's task recorded in `run.json`).
"""

import contextlib
import json
import platform
import shlex
import sys
import tempfile
import textwrap
from pathlib import Path

import click

import dltool
from dltool.core.errors import DltoolError, DestinationExistsError, ReportedError


@contextlib.contextmanager
def user_errors():
    """Turns dltool's errors, and operating-system errors, into one-line click errors."""
    try:
        yield
    except ReportedError as e:
        raise click.exceptions.Exit(e.exit_code) from None
    except DltoolError as e:
        error = click.ClickException(str(e))
        error.exit_code = getattr(e, "exit_code", 1)
        raise error from None
    except OSError as e:  # the last net: one the library did not word itself
        where = f"{e.filename}: " if e.filename else ""
        raise click.ClickException(f"{where}{e.strerror or e}") from None


class ProjectContext:
    """The project a command works on: the `--project` option, the folder it
    names (the current folder without it) and its config, read when first
    needed.

    Attributes:
        option: The `--project` value, or None.
    """

    def __init__(self):
        self.option = None
        self._folder = None

    @property
    def given(self):
        """Whether `--project` was given."""
        return self.option is not None

    @property
    def folder(self):
        """The project folder, absolute.

        Raises:
            ProjectError: if it has no `config.toml`.
        """
        if self._folder is None:
            from dltool.core.project import find_project

            self._folder = find_project(self.option)
        return self._folder

    def config(self, overrides=()):
        """The project's validated config with `section.key=value` overrides.

        Raises:
            ProjectError: not a project.
            ConfigError: a bad key or value.
        """
        from dltool.core.project import load_config

        return load_config(self.folder, overrides)


pass_project = click.make_pass_decorator(ProjectContext, ensure=True)


def _remember_project(ctx, param, value):
    ctx.ensure_object(ProjectContext).option = value
    return value


project_option = click.option(
    "--project", type=click.Path(file_okay=False, path_type=str), default=None,
    expose_value=False, callback=_remember_project,
    help="Project folder (default: the current folder).")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override a config value, e.g. --set training.epochs=5 (repeatable).")
skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="Drop unusable data files and say how many.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


def _complete_runs(ctx, param, incomplete):
    """Shell completion of run names: the folders under the project's runs/."""
    from dltool.core.runs import RUNS_DIR

    root = Path(ctx.ensure_object(ProjectContext).option or ".") / RUNS_DIR
    try:
        names = sorted((p.name for p in root.iterdir() if p.is_dir()), reverse=True)
    except OSError:
        return []
    return [name for name in names if name.startswith(incomplete)]


run_option = click.option(
    "--run", "run_name", default=None, shell_complete=_complete_runs,
    help="Run name under runs/ (default: the newest).")


def quiet_option(what):
    return click.option("--quiet", "-q", is_flag=True,
                        help=f"Print only {what}, no headers or progress.")


def _check_output_flags(quiet, as_json):
    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together")


def _progress(quiet):
    """The echo of progress lines: stderr (stdout stays parseable), or none."""
    return None if quiet else (lambda line: click.echo(line, err=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(dltool.__version__, prog_name="dltool")
def cli():
    """Ready-made Keras 3 / TensorFlow projects: scaffold, train, tune, export, predict.

    \b
    Start with:
      dltool templates                      list the templates
      dltool new image-classifier my-cnn    create a project
      cd my-cnn && dltool train             train it (then evaluate, export, predict)
    """


@cli.command()
def templates():
    """List the project templates."""
    from dltool.core.templates import list_templates

    with user_errors():
        found = list_templates()
    width = max(len(t["name"]) for t in found)
    for template in found:
        click.echo(f"{template['name']:<{width}}  {template['description']}")


def _complete_templates(ctx, param, incomplete):
    from dltool.core.templates import list_templates

    try:
        names = [t["name"] for t in list_templates()]
    except DltoolError:
        return []
    return [name for name in names if name.startswith(incomplete)]


@cli.command()
@click.argument("template", shell_complete=_complete_templates)
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--name", default=None, help="Project name (default: DEST's folder name).")
@click.option("--data", default=None,
              help="Data source for the config: a folder, a CSV/TSV manifest (images), "
                   "tfds:NAME or builtin:NAME; a relative path is from the current "
                   "folder (written relative to the project).")
@click.option("--force", is_flag=True,
              help="Replace an existing DEST (it is kept as DEST.dltool-backup-TIME).")
def new(template, dest, name, data, force):
    """Create a project from TEMPLATE in the new folder DEST."""
    from dltool.core.scaffold import render_project
    from dltool.core.templates import find_template

    with user_errors():
        try:
            result = render_project(template, dest, name=name, data=data, force=force)
        except DestinationExistsError as e:
            raise click.UsageError(str(e)) from None
        predict_example = find_template(template).get("predict_example", "samples/*.jpg")
    if result["backup"]:
        click.echo(f"Moved the existing {dest} to {result['backup']}")
    click.echo(f"Created {template} project {result['path'].name} in {result['path']}")
    # Quoted for the shell, so the line can be pasted whatever DEST holds.
    click.echo(f"Next:\n  cd {shlex.quote(dest)}\n  dltool train\n  dltool evaluate\n"
               f"  dltool export\n  dltool predict {predict_example}")


@cli.command()
@project_option
@set_option
@quiet_option("the strategy and precision a run would use")
@json_option
@pass_project
def info(project, overrides, quiet, as_json):
    """Show versions, devices, and the strategy and precision a run would use.

    In a project whose config has "auto" values (e.g. data.image_size), the
    data is read, and what each would be set to is shown, with why.
    """
    _check_output_flags(quiet, as_json)
    with user_errors():
        config = _project_config(project, overrides)
        from dltool.core.config import COMMON_SECTIONS
        from dltool.engine import runtime

        runtime_section = config["runtime"] if config is not None else \
            {k: f.default for k, f in COMMON_SECTIONS["runtime"].items()}
        facts = {"dltool": dltool.__version__, "python": platform.python_version(),
                 **runtime.describe(runtime_section)}
        if not quiet:
            auto_facts, resolved = _auto_facts(config, project, overrides)
            if config is not None:  # the backbone's phases need the resolved epochs
                from dltool.tasks import task_for

                facts.update(task_for(config.template).model_facts(resolved or config))
            facts.update(auto_facts)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    if quiet:
        click.echo(f"{facts['strategy'].split()[0]} {facts['precision'].split()[0]}")
        return
    for key, value in facts.items():
        lines = value if isinstance(value, list) else [value]
        click.echo(f"{key + ':':<12} {lines[0]}")
        for line in lines[1:]:
            click.echo(f"{'':<12} {line}")


def _auto_facts(config, project, overrides):
    """What the project's "auto" config values would be set to for its data.

    Returns:
        A tuple `(facts, resolved)`: `{"auto": lines}`, one line each (the
        data report's lines), or one line saying why not when the data
        cannot be read; and the config with them decided, or None. `({},
        None)` outside a project (`config` None) or without any.
    """
    from dltool.core import auto

    if config is None or not auto.unresolved(config):
        return {}, None
    from dltool.core.errors import DataError
    from dltool.engine.experiment import Experiment

    experiment = Experiment.open(project.folder, overrides)
    try:
        experiment.open_data()
    except DataError as e:
        return {"auto": f"decided when the data can be read ({e})"}, None
    return {"auto": [choice.line() for choice in experiment.auto_choices]}, experiment.config


def _project_config(project, overrides):
    """The project's config; None outside a project."""
    from dltool.core.config import CONFIG_FILE

    if not project.given and not Path(CONFIG_FILE).is_file():
        return None
    return project.config(overrides)


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
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed (training.seed).")
@click.option("--deterministic", is_flag=True, default=None,
              help="Deterministic ops: the same seed gives bit-identical weights "
                   "on the same hardware (training.deterministic).")
@click.option("--worker-hosts", default=None, metavar="HOST:PORT,HOST:PORT",
              help="Train on several workers (multi-worker strategy); worker 0 is "
                   "the chief. Run the same command on each, with its --task-index.")
@click.option("--task-index", type=int, default=None,
              help="This worker's index in --worker-hosts, from 0.")
@click.option("--fresh", is_flag=True, help="Start a new run instead of resuming one.")
@click.option("--hparams", default=None, metavar="best|SEARCH",
              help="Use the best hyperparameters of the newest search (best) or of the "
                   "search named SEARCH (see dltool tune).")
@click.option("--init-from", default=None, metavar="RUN|FOLDER|FILE.keras",
              shell_complete=_complete_runs,
              help="Start from the weights of a run of this project, a run folder, an "
                   "exported version folder (saved_models/NAME/N) or a .keras file of the "
                   "same template; the head is rebuilt when the classes differ.")
@skip_bad_option
@pass_project
def train(project, overrides, epochs, batch_size, strategy, precision, seed,
          deterministic, worker_hosts, task_index, fresh, hparams, init_from, skip_bad):
    """Train the project's model; run it again to resume an interrupted run.

    SIGTERM saves a checkpoint after the current batch (multi-worker: within
    10 batches, every worker) and exits with code 143; SIGKILL loses at most
    the epoch in progress. A TF_CONFIG in the
    environment is used as --worker-hosts is.
    """
    flags = {"training.epochs": epochs, "training.batch_size": batch_size,
             "runtime.strategy": strategy, "runtime.precision": precision,
             "training.seed": seed, "training.deterministic": deterministic}
    overrides = (*overrides, *_flag_overrides(flags))
    with user_errors():
        from dltool.engine.cluster import find_cluster

        cluster = find_cluster(worker_hosts, task_index)
        folder = project.folder
        if hparams is not None:
            from dltool.tuning import trials

            values, search = trials.find_best_hyperparameters(folder, hparams)
            click.echo(f"Hyperparameters of search {search}'s best trial: "
                       + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
            overrides = (*trials.hyperparameter_overrides(values), *overrides)
        from dltool.engine.train import train as run_training

        run_training(folder, overrides, skip_bad=skip_bad, fresh=fresh, cluster=cluster,
                     init_from=init_from, echo=click.echo)


def _flag_overrides(flags):
    return [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]


@cli.command()
@project_option
@set_option
@click.option("--tuner", default=None, metavar="random|grid|hyperband|bayesian",
              help="Search algorithm (default: tune.tuner).")
@click.option("--objective", default=None,
              help="Metric to optimize, e.g. val_accuracy, val_loss (default: tune.objective).")
@click.option("--direction", default=None, metavar="max|min|auto",
              help="Whether the objective should go up or down (default: auto from its name).")
@click.option("--max-trials", type=click.IntRange(min=1), default=None,
              help="Trials to run at most.")
@click.option("--executions-per-trial", type=click.IntRange(min=1), default=None,
              help="Models trained per trial (their scores are averaged).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs per trial at most (Hyperband: of its longest trials).")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Stop after this long, e.g. 90s, 30m, 2h; rerun to continue.")
@click.option("--name", default=None, help="Search name under tuning/ (default: the tuner's).")
@click.option("--fresh", is_flag=True,
              help="Start the search over (the old one is moved aside, not deleted).")
@click.option("--export-best", is_flag=True,
              help="Then retrain the best hyperparameters on train + validation and export.")
@click.option("--chief", default=None, metavar="HOST:PORT",
              help="Serve the search to workers on HOST:PORT (token in tuning/NAME/"
                   "chief.token, no encryption: private networks only).")
@click.option("--worker", default=None, metavar="HOST:PORT",
              help="Run trials for the chief at HOST:PORT.")
@click.option("--connect-timeout", type=click.FloatRange(min=0), default=60.0,
              show_default=True, help="Seconds a worker waits for its chief.")
@click.option("--token-file", default=None, metavar="PATH",
              help="A worker's copy of the chief's token (default: DLTOOL_TUNE_TOKEN, else "
                   "tuning/NAME/chief.token).")
@skip_bad_option
@click.option("--child-of", default=None, hidden=True,
              help="Internal: run trials as a child of a local search (STARTED,DEADLINE,INDEX).")
@pass_project
def tune(project, overrides, tuner, objective, direction, max_trials, executions_per_trial,
         epochs, time_budget, name, fresh, export_best, chief, worker, connect_timeout,
         token_file, skip_bad, child_of):
    """Search the hyperparameters of the config's [search] section with keras-tuner.

    Run the same command again to continue an interrupted search. The trials
    table, the best hyperparameters and TensorBoard logs (HParams) go to
    tuning/NAME/; `dltool train --hparams best` trains with the best.
    """
    flags = {"tune.tuner": tuner, "tune.objective": objective, "tune.direction": direction,
             "tune.max_trials": max_trials, "tune.executions_per_trial": executions_per_trial,
             "tune.epochs": epochs, "tune.time_budget": time_budget}
    overrides = (*overrides, *_flag_overrides(flags))
    with user_errors():
        folder = project.folder
        from dltool.tuning import children as search_processes

        summary = None
        # A --token-file without --worker goes on to be refused by run_tuning.
        if not (chief or worker or child_of or token_file):  # TensorFlow stays out
            summary = search_processes.run_in_children(
                folder, overrides, name=name, fresh=fresh, export_best=export_best,
                skip_bad=skip_bad)
        if summary is None:
            from dltool.tuning.search import tune as run_tuning

            child = search_processes.ChildRole.parse(child_of) if child_of else None
            summary = run_tuning(folder, overrides, name=name, fresh=fresh, chief=chief,
                                 worker=worker, connect_timeout=connect_timeout,
                                 token_file=token_file, export_best=export_best,
                                 skip_bad=skip_bad, echo=click.echo, child=child)
    if summary.get("more_trials"):
        sys.exit(search_processes.MORE_TRIALS_EXIT)


@cli.command()
@project_option
@run_option
@set_option
@click.option("--split", type=click.Choice(["test", "val"]), default="test",
              help="Split to evaluate on.")
@skip_bad_option
@quiet_option("the accuracy (a translator: the BLEU score)")
@json_option
@pass_project
def evaluate(project, run_name, overrides, split, skip_bad, quiet, as_json):
    """Evaluate the best weights of a run: loss, accuracy, per-class figures
    (classifiers); BLEU and chrF, with sample translations (translator).

    Also writes the run's report (figures, report.html, report.md).
    """
    _check_output_flags(quiet, as_json)
    with user_errors():
        from dltool.core import runs
        from dltool.engine.evaluate import evaluate as run_evaluation
        from dltool.tasks import task_for

        result = run_evaluation(project.folder, run_name, split, skip_bad=skip_bad,
                                overrides=overrides, echo=_progress(quiet))
        task = task_for(runs.find_run(project.folder, result["run"]).template)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif quiet:
        click.echo(task.evaluation_summary(result))
    else:
        for line in task.evaluation_lines(result):
            click.echo(line)


@cli.command()
@project_option
@run_option
@set_option
@click.option("--name", default=None, help="Model name under saved_models/ (exports/).")
# Checked by dltool.engine.formats, which holds the one list of formats and
# quantizations (a click.Choice here would load TensorFlow for --help).
@click.option("--format", "export_format", default="savedmodel", show_default=True,
              help="savedmodel (raw input in, labels out), litert or onnx (pixels or "
                   "token ids in, under exports/NAME/FORMAT/VERSION).")
@click.option("--quantize", default="none", show_default=True,
              help="none; for litert also float16, dynamic or int8 (calibrated on "
                   "training examples); for onnx also dynamic (classifiers only).")
@pass_project
def export(project, run_name, overrides, name, export_format, quantize):
    """Export a run as saved_models/NAME/VERSION (raw input in, labels out), or
    as LiteRT / ONNX under exports/NAME/FORMAT/VERSION."""
    with user_errors():
        from dltool.engine.export import export as run_export

        result = run_export(project.folder, run_name, name, export_format=export_format,
                            quantize=quantize, overrides=overrides, echo=_progress(False))
    contents = "SavedModel + model.keras" if result["file"] is None else result["file"]
    click.echo(f"Exported run {result['run']} as {result['path']} "
               f"({contents}, version {result['version']})")


@cli.command()
@click.argument("inputs", nargs=-1)
@click.option("--file", "input_file", type=click.Path(dir_okay=False, path_type=str),
              default=None, help="Read more inputs from a UTF-8 file, one per line.")
@click.option("--column", default=None, metavar="NAME",
              help="Read INPUTS that are CSV/TSV files (header first): the inputs are "
                   "this column's cells (texts, or image paths relative to the file).")
@click.option("--output", "-o", "output_file", default=None, metavar="FILE.csv",
              type=click.Path(dir_okay=False, path_type=str),
              help="Write the predictions to a CSV file (TSV for .tsv), complete or not "
                   "at all, instead of printing them.")
@click.option("--skip-bad", is_flag=True,
              help="Skip unusable inputs (each named on stderr) instead of stopping.")
@project_option
@click.option("--model", "model_path", default=None,
              help="SavedModel folder or .keras file (default: the newest export).")
@click.option("--trusted", is_flag=True,
              help="No warning for a SavedModel this project did not export.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Classes to show per input (default: export.top_k).")
@click.option("--explain", is_flag=True,
              help="Image classifier: also write each image's Grad-CAM heatmap of the "
                   "predicted class over it, as NAME.gradcam.png beside it.")
@click.option("--explain-dir", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Write the --explain pictures to DIR instead (implies --explain).")
@set_option
@quiet_option("the top label of each input, one per line")
@json_option
@pass_project
def predict(project, inputs, input_file, column, output_file, skip_bad, model_path, trusted,
            top_k, explain, explain_dir, overrides, quiet, as_json):
    """Predict INPUTS (image files, or texts for text templates) with an exported model.

    A folder in INPUTS stands for its files, recursively: images for the image
    classifier, .txt files (one input each) for text templates. For a
    translator, each input is a sentence and its translation is printed.
    Inputs are read and predicted in batches, so their number does not bound
    memory.

    With --explain, the image classifier also writes, for each image
    DIR/NAME.EXT, DIR/NAME.gradcam.png: the image under the Grad-CAM heatmap
    of its predicted class (red where the model looked), drawn with the
    export's model.keras; all of them or, on an error, none.
    """
    _check_output_flags(quiet, as_json)
    if not inputs and input_file is None:
        raise click.UsageError("give INPUTS or --file PATH")
    if output_file is not None and as_json:
        raise click.UsageError("--output and --json cannot be used together")
    with user_errors():
        lines = ()
        if input_file is not None:
            from dltool.data.text import read_input_lines

            lines = read_input_lines(input_file)
        folder = None
        if model_path is None or project.given or overrides:
            folder = project.folder
        if top_k is None:
            top_k = project.config(overrides)["export"]["top_k"] if folder else 3
        if output_file is not None:
            from dltool.core.files import check_writable

            check_writable(Path(output_file).absolute().parent)  # before any prediction
        from dltool.engine.predict import Inputs, predict as run_predict

        items = Inputs(inputs, column=column, lines=lines)
        explanations = None
        if explain or explain_dir is not None:  # refused, if at all, before any prediction
            from dltool.engine.explain import plan_explanations

            explanations = plan_explanations(folder or _folder_if_any(project), items,
                                             model_path=model_path, out_dir=explain_dir)
            model_path = explanations.source
        warn = None if trusted else (lambda line: click.echo(line, err=True))
        def on_bad(shown, reason):
            on_bad.count += 1
            on_bad.skipped.append(shown)
            click.echo(f"Skipped {reason}", err=True)

        on_bad.count = 0
        on_bad.skipped = []

        with _progress_bar(quiet) as progress:
            source, task, results = run_predict(
                folder or _folder_if_any(project), items,
                model_path=model_path, top_k=top_k, warn=warn, skip_bad=skip_bad,
                on_bad=on_bad, progress=progress,
                keras_model=explanations.model if explanations is not None and
                model_path.suffix == ".keras" else None)
            with _prediction_writer(task, source, top_k, output_file, quiet, as_json) as write:
                for item, prediction in results:
                    warning = task.prediction_warning(item, prediction)
                    if warning is not None:
                        click.echo(warning, err=True)
                    write(item, prediction)
                if explanations is not None:  # inside: an error prints and writes nothing
                    pictures = explanations.write(on_bad.skipped, skip_bad)
        if explanations is not None and not quiet:
            where = f"in {explain_dir}" if explain_dir is not None else "beside the inputs"
            click.echo(f"Wrote {len(pictures)} Grad-CAM picture(s) {where}"
                       + (f": {pictures[0]}" + (", ..." if len(pictures) > 1 else "")
                          if pictures else ""), err=True)
    if on_bad.count:
        click.echo(f"Skipped {on_bad.count} unusable input(s) (--skip-bad)", err=True)
    if output_file is not None and not quiet:
        click.echo(f"Model: {source}")
        click.echo(f"Wrote {write.count} predictions to {output_file}")


def _folder_if_any(project):
    """The project folder, or None outside one (`predict --model` works anywhere)."""
    try:
        return project.folder
    except DltoolError:
        return None


@contextlib.contextmanager
def _progress_bar(quiet):
    """Yields the `progress(done, total)` of `dltool predict`, or None.

    On a terminal, a progress bar on stderr; elsewhere (a log, a pipe) a line
    `Predicted DONE/TOTAL` after each batch when there is more than one; with
    `quiet`, nothing.
    """
    if quiet:
        yield None
    elif sys.stderr.isatty():
        bar = None

        def progress(done, total):
            nonlocal bar
            if bar is None:
                bar = click.progressbar(length=total, label="Predicting", file=sys.stderr)
            bar.update(done - bar.pos)

        try:
            yield progress
        finally:
            if bar is not None:
                bar.render_finish()
    else:
        started = False

        def progress(done, total):
            nonlocal started
            started = started or done < total  # one batch: no line
            if started:
                click.echo(f"Predicted {done}/{total}", err=True)

        yield progress


@contextlib.contextmanager
def _prediction_writer(task, source, top_k, output_file, quiet, as_json):
    """Yields `write(item, prediction)`; what it wrote appears when the block
    ends without an error, so a bad input leaves nothing half-written.

    With `output_file`, the rows go to the table through
    `core.tables.writing_rows` (complete or absent). Otherwise the lines that
    `dltool predict` prints (text, `--quiet` or `--json`) are held in an
    unnamed temporary file, not in memory, and printed at the end. The
    function's `count` attribute is the number written.
    """
    if output_file is not None:
        from dltool.core import tables

        delimiter = "\t" if output_file.lower().endswith(".tsv") else ","
        with tables.writing_rows(output_file, delimiter) as write_row:
            write_row(task.prediction_columns(top_k))

            def write(item, prediction):
                write_row(task.prediction_row(item, prediction, top_k))
                write.count += 1

            write.count = 0
            yield write
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8") as held:
        def write(item, prediction):
            if as_json:  # one list item as `json.dumps(items, indent=2)` writes it
                record = json.dumps(task.prediction_record(item, prediction), indent=2,
                                    ensure_ascii=task.json_ensure_ascii)
                line = ("[\n" if write.count == 0 else ",\n") + textwrap.indent(record, "  ")
            else:
                line = (task.prediction_summary(prediction) if quiet
                        else task.prediction_line(item, prediction)) + "\n"
            held.write(line)
            write.count += 1

        write.count = 0
        yield write
        if as_json:
            held.write("\n]\n" if write.count else "[]\n")
        elif not quiet:
            click.echo(f"Model: {source}")
        held.seek(0)
        for line in held:
            click.echo(line, nl=False)


@cli.command()
@click.argument("model", metavar="[MODEL]", required=False)
@project_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than loopback is reachable by others, "
                   "and requests must carry the token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8501, show_default=True,
              help="Port (TF Serving's REST port by default; 0 picks a free one).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most examples in one model call (and in one request).")
@click.option("--batch-timeout-ms", type=click.FloatRange(min=0), default=2.0,
              show_default=True, help="How long a batch waits for more requests.")
@click.option("--batch-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Most model calls running at once (TF Serving's num_batch_threads).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=16 << 20,
              show_default=True, help="Largest request body (413 past it).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the token requests must carry (Authorization: Bearer "
                   "TOKEN); else DLTOOL_SERVE_TOKEN, else off loopback a new one in "
                   "saved_models/NAME/serve.token.")
@click.option("--trusted", is_flag=True,
              help="No warning for a SavedModel this project did not export.")
@pass_project
def serve(project, model, host, port, max_batch, batch_timeout_ms, batch_threads,
          max_body_bytes, token_file, trusted):
    """Serve MODEL over TensorFlow Serving's REST API until SIGTERM or Ctrl-C.

    MODEL is a model name under saved_models/, a saved_models/NAME folder
    (all its versions; the highest is the default) or one version folder
    (default: the project's newest export). POST
    /v1/models/NAME[/versions/N]:predict with {"instances": [...]}, binary
    inputs as {"b64": "..."}; GET /v1/models/NAME[/metadata]. Off loopback
    (or with --token-file or DLTOOL_SERVE_TOKEN) every request must send
    "Authorization: Bearer TOKEN"; the first line printed says where the
    token is.
    """
    with user_errors():
        from dltool.serving.server import serve as run_server

        folder = _folder_if_any(project) if model is not None and not project.given \
            else project.folder  # a model path serves anywhere, as `predict --model`
        run_server(folder, model, host=host, port=port, max_batch=max_batch,
                   batch_timeout_ms=batch_timeout_ms, batch_threads=batch_threads,
                   max_body_bytes=max_body_bytes, token_file=token_file, trusted=trusted,
                   echo=click.echo, warn=lambda line: click.echo(line, err=True))


@cli.command()
@click.argument("run_name", metavar="[RUN]", required=False, shell_complete=_complete_runs)
@project_option
@pass_project
def report(project, run_name):
    """Write the report of RUN (default: the newest trained run) again.

    The report is PNG figures, a self-contained report.html and report.md in
    the run folder; train, evaluate and export write it too.
    """
    with user_errors():
        from dltool.engine.reporting import report_for

        report_for(project.folder, run_name, echo=click.echo)


@cli.command("runs")
@project_option
@click.option("--compare", nargs=2, metavar="RUN_A RUN_B", shell_complete=_complete_runs,
              default=None, help="Show two runs' config differences and metrics side by side.")
@quiet_option("the run names")
@json_option
@pass_project
def runs_command(project, compare, quiet, as_json):
    """List the project's runs, newest first (or compare two)."""
    _check_output_flags(quiet, as_json)
    from dltool.core import runs

    with user_errors():
        if compare:
            _print_comparison(runs.compare(project.folder, *compare), quiet, as_json)
            return
        listed = runs.list_runs(project.folder)
        found = [runs.summary(run) for run in listed]
        scores = [run.get("table_score") for run in listed]
    if quiet:
        for facts in found:
            click.echo(facts["name"])
    elif as_json:
        click.echo(json.dumps(found, indent=2))
    elif not found:
        click.echo(f"No runs yet in {project.folder / runs.RUNS_DIR}: run `dltool train`")
    else:
        header = ["name", "template", "date", "status", "epochs", "best", "test", "exported"]
        rows = [[f["name"], f["template"], f["date"], f["status"], str(f["epochs"]),
                 f"{f['monitor']} {f['best']:.4f}" if f["best"] is not None else "-",
                 _score_cell(score), f["exported"] or "-"] for f, score in zip(found, scores)]
        _print_table(header, rows)


def _print_comparison(comparison, quiet, as_json):
    if as_json:
        click.echo(json.dumps(comparison, indent=2))
        return
    name_a, name_b = comparison["runs"]
    config = [[k, _cell(a), _cell(b)] for k, a, b in comparison["config"]]
    if quiet:
        for key, _, _ in config:
            click.echo(key)
        return
    click.echo("Config differences:" if config else "Config: the same")
    if config:
        _print_table(["key", name_a, name_b], config)
    click.echo("\nMetrics:")
    _print_table(["", name_a, name_b], [[k, _cell(a), _cell(b)]
                                       for k, a, b in comparison["metrics"]])


def _score_cell(score):
    """A run's `table_score`: `[metric, value]`, or a bare test accuracy as
    runs evaluated before dltool named the metric recorded it."""
    if score is None:
        return "-"
    name, value = score if isinstance(score, list) else ("accuracy", score)
    return f"{name} {value:.4f}" if abs(value) <= 1 else f"{name} {value:.2f}"


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def _print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip())


@cli.command()
@project_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 makes it reachable from other machines).")
@click.option("--port", type=click.IntRange(0, 65535), default=6006, show_default=True,
              help="Port to listen on (0: any free port).")
@pass_project
def tensorboard(project, host, port):
    """Start TensorBoard on the project's runs (and tuning searches); Ctrl+C stops it."""
    from dltool.core.runs import tensorboard_logdirs

    with user_errors():
        logdirs = tensorboard_logdirs(project.folder)
    spec = ",".join(f"{name}:{path}" for name, path in logdirs.items())
    click.echo("Logs: " + ", ".join(str(p) for p in logdirs.values()), err=True)
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir_spec", spec, "--host", host, "--port", str(port)])
    sys.exit(board.main())


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the shell completion script for SHELL.

    \b
    bash:  eval "$(dltool completion bash)"    (add it to ~/.bashrc)
    zsh:   eval "$(dltool completion zsh)"     (add it to ~/.zshrc)
    fish:  dltool completion fish > ~/.config/fish/completions/dltool.fish
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)(cli, {}, "dltool", "_DLTOOL_COMPLETE")
    click.echo(completer.source())


def main():
    """Entry point of the `dltool` console script."""
    cli(prog_name="dltool")


if __name__ == "__main__":
    sys.exit(main())
