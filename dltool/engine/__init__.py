"""Engine: what runs a model, for every template alike.

The one setup path (`experiment.Experiment`: config, task, `model.py`,
strategy and precision, data, model), strategies and precision
(`runtime`, `cluster`), training and its callbacks (`train`, `callbacks`),
evaluation, export, prediction and reports (`evaluate`, `export`,
`predict`, `reporting`), and safe model loading (`modelfiles`). Imports:
`dltool.core`, `dltool._tf`, `dltool.data`, `dltool.report` and
`dltool.tasks`.
"""
