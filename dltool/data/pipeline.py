"""Batch tf.data datasets for training and evaluation.

Decoding happens in the sources (in parallel, AUTOTUNE); here the decoded
examples are cached when they fit in memory, shuffled (training only),
batched and prefetched.

Sharding between the workers of a multi-worker run uses tf.data's `DATA`
auto-shard policy: every worker runs the same pipeline (same seeded shuffle
order) and keeps its share of each global batch. The `FILE` policy does not
fit: the sources are in-memory lists of paths or texts, not file-reading
datasets, and a data set of fewer files than workers (one TSV, one TFDS
shard) could not be split by file anyway.
"""

import os

import numpy as np

from dltool._tf import tf

_CACHE_FRACTION_OF_RAM = 0.25


def fits_in_memory(num_bytes):
    """Returns whether `num_bytes` is under a quarter of physical memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return False
    return num_bytes < _CACHE_FRACTION_OF_RAM * total


def should_cache(mode, num_examples, bytes_per_example):
    """Decides whether to cache decoded examples in memory.

    Args:
        mode: `auto`, `memory` or `off` (the config's `data.cache`).
        num_examples: Examples in the split.
        bytes_per_example: Size of one decoded example.
    """
    if mode == "auto":
        return fits_in_memory(num_examples * bytes_per_example)
    return mode == "memory"


def batched(ds, batch_size, *, training, seed=None, cache=False, shuffle_buffer=None,
            element_length=None, bucket_boundaries=None):
    """Turns a dataset of examples into a dataset of batches.

    Args:
        ds: Unbatched `tf.data.Dataset`.
        batch_size: Global batch size (a distribution strategy splits it
            between its replicas).
        training: Shuffle every epoch when true.
        seed: Shuffle seed.
        cache: Cache the decoded examples in memory.
        shuffle_buffer: Shuffle buffer size; the whole split when it is cached.
        element_length: For examples of variable length (token ids): a
            function of an example returning its length. Examples are then
            grouped by length (`bucket_by_sequence_length`) and each batch
            padded with 0 to its longest example only, so little time goes
            into padding.
        bucket_boundaries: Length boundaries of the groups, with
            `element_length`.

    Returns:
        A batched, prefetched `tf.data.Dataset`.
    """
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer or 10_000, seed=seed, reshuffle_each_iteration=True)
    if element_length is None:
        ds = ds.batch(batch_size)
    else:
        ds = ds.bucket_by_sequence_length(
            element_length, bucket_boundaries,
            [batch_size] * (len(bucket_boundaries) + 1))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def predict_all(model, dataset, on_batch=None):
    """Runs a model over a batched dataset of `(inputs, targets)`.

    Args:
        model: The Keras model.
        dataset: Batches of `(inputs, targets)`.
        on_batch: Called as `on_batch(inputs, targets, probabilities)` with
            each batch's numpy arrays, or None.

    Returns:
        `(targets, probabilities)`: numpy arrays, the targets as the dataset
        gives them and the model's outputs as float32.
    """
    targets, probabilities = [], []
    for x, y in dataset:
        targets.append(np.asarray(y))
        probabilities.append(np.asarray(model(x, training=False), dtype=np.float32))
        if on_batch is not None:
            on_batch(x, targets[-1], probabilities[-1])
    return np.concatenate(targets), np.concatenate(probabilities)
