"""dltool: ready-made Keras 3 / TensorFlow projects.

Importing this package is cheap: TensorFlow is imported only by the modules
that need it (data, training, export, predict), never by the CLI's
`--help`, `templates` or `new` paths.
"""

__version__ = "0.1.0"
