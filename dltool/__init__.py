"""dltool: ready-made Keras 3 / TensorFlow projects.

Importing this package is cheap: TensorFlow is imported only by the modules
that need it (data, training, export, predict), never by the CLI's
`--help`, `templates` or `new` paths.
"""

__version__ = "0.1.0"

# The name to install dltool by (`pip install dltool-keras`): the name
# `dltool` on the package index is an unrelated project. The command and the
# import package stay `dltool`.
DISTRIBUTION = "dltool-keras"
