"""Data: readers and tf.data pipelines, and the embedded samples.

Image folders and manifests (`images`), delimited text and text folders
(`text`), parallel text (`parallel`), seeded splits (`splits`), TFDS
loading (`tfds_loader`) and batching, caching and prefetching
(`pipeline`). Imports: `dltool.core` and `dltool._tf` only.
"""
