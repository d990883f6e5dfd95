"""Opens TensorFlow Datasets data sets for dltool's data sources."""

from dltool.core.errors import DataError


def prepared_builder(name):
    """Returns the TFDS builder of `name`, its data downloaded and prepared.

    Args:
        name: A TFDS data set name, e.g. `cifar10` or `imdb_reviews`.

    Raises:
        DataError: in one line, whatever TFDS raised (unknown name, no
            network, bad checksums).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name)
        builder.download_and_prepare()
    except Exception as e:  # TFDS raises many types: network, registry, checksums.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not load TFDS data set {name!r}: {first_line}") from e
    return builder
