"""Tuning: `dltool tune`, keras-tuner behind one adapter.

`adapter` holds every use of keras-tuner's internals, its patches, the
chief's service and the state repair; `search` the local, chief and worker
searches; `space` the `[search]` section as hyperparameters; `trials` a
search folder's files (no TensorFlow); `children` a local search as a chain
of child processes (no TensorFlow in the parent). Imports: every layer
below, never `dltool.cli`. This package's own `__init__` imports nothing,
so `children` stays TensorFlow-free.
"""
