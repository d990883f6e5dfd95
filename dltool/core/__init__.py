"""Core: what every layer stands on, without TensorFlow.

Errors and their one-line messages (`errors`), the config and its schema
(`config`), the template registry (`templates`) and rendering (`scaffold`),
a project's folder and config (`project`), runs and their files (`runs`),
atomic writes (`files`), tables safe to open in a spreadsheet (`tables`), a metric's direction (`metrics`) and child
processes (`processes`). Imports: the standard library, tomli-w and Jinja2
only, never TensorFlow, Keras or another dltool layer.
"""
