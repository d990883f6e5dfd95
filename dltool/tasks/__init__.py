"""What differs between templates: data, model inputs, serving, prediction.

Each template's task module provides:

- `open_data(config, root, *, skip_bad)`: the data, with `splits`, `sizes`,
  `report` and `meta` (what the exported model needs: class names, ...);
- `bytes_per_example(config)`: size of one decoded example, for caching;
- `model_kwargs(meta)`: extra arguments of the project's `build_model`;
- `serving_endpoint(model, meta)`: the exported signature's function and
  input signature (raw input in, readable output out); the function may list
  in a `resources` attribute layers it uses besides the model (a text
  vectorizer), so the export saves their lookup tables, and in an
  `endpoints` attribute more signatures (name to function, same input);
- `read_inputs(items)` and `format_prediction(outputs, i, top_k)` for
  `dltool predict` (a list of `(label, probability)` for classifiers, a
  dict with `translation` for the translator);
- `evaluate_split(model, data, split, config, run, echo)`: the figures `dltool
  evaluate` reports (classifiers: loss, accuracy and the per-class report of
  `evaluation_report(y_true, probabilities, meta)`, with one row per example
  in `predictions-SPLIT.csv`; translator: BLEU, chrF and sample
  translations);
- `readable_inputs(data, split)` (classifiers): the split's inputs as text
  for `predictions-SPLIT.csv` (texts), or None;
- `report_sections(run, split, evaluation)`: the template's part of the run
  report (`dltool.report.reports.Section`s; classifiers start from
  `reports.classifier_sections`);
- optionally `save_examples(run_dir, split, examples)`: keep the evaluation
  inputs a report shows (images);
- optionally `batching(config)`: extra `pipeline.batched` arguments (the
  translator groups pairs by length).
"""

import importlib

from dltool.core.errors import ConfigError

_TASK_MODULES = {"image-classifier": "dltool.tasks.image_classifier",
                 "sentiment": "dltool.tasks.sentiment",
                 "translator": "dltool.tasks.translator"}


def task_for(template):
    """Returns the task module of a template.

    Raises:
        ConfigError: if the template has no task module.
    """
    if template not in _TASK_MODULES:
        raise ConfigError(f"project.template must be one of {', '.join(_TASK_MODULES)}; "
                          f"got {template!r}")
    return importlib.import_module(_TASK_MODULES[template])
