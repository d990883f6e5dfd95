"""The PNG figures of a run report, drawn with matplotlib.

Figures are drawn on `matplotlib.figure.Figure` objects directly (no
`pyplot`), so nothing touches matplotlib's global backend or state and no
display is needed. matplotlib is imported inside the functions: importing
this module is free.

This module never imports TensorFlow.
"""

import textwrap

_DPI = 100
_GOOD, _BAD = "#1a7f37", "#cf222e"


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def learning_curves(history, path):
    """Plots each metric of a training history, train and validation.

    Args:
        history: Dict of column name (`loss`, `val_loss`, `accuracy`, ...)
            to a list of per-epoch values; `epoch` holds the 0-based epochs.
        path: PNG file to write.

    Returns:
        The names of the metrics plotted (without `val_`); nothing is
        written when there are none.
    """
    names = [k for k in history if k not in ("epoch", "learning_rate")
             and not k.startswith("val_")]
    names.sort(key=lambda k: (k != "loss", k))
    if not names:
        return []
    epochs = [e + 1 for e in history["epoch"]]
    figure = _figure(4.2 * len(names), 3.2)
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        ax.plot(epochs, history[name], marker="o", markersize=3, label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", markersize=3,
                    linestyle="--", label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) < 15:
            ax.set_xticks(epochs)
    figure.savefig(path)
    return names


def confusion_matrix(matrix, class_names, path):
    """Plots a confusion matrix: counts, coloured by share of the true class.

    Args:
        matrix: List of lists, `matrix[true][predicted]` counts.
        class_names: Names of the classes, index = label.
        path: PNG file to write.
    """
    import numpy as np

    counts = np.asarray(matrix)
    shares = counts / np.maximum(1, counts.sum(axis=1, keepdims=True))
    size = min(16.0, 2.5 + 0.45 * len(class_names))
    figure = _figure(size + 1.0, size)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [_short(n, 14) for n in class_names], rotation=45, ha="right")
    ax.set_yticks(ticks, [_short(n, 14) for n in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")
    figure.savefig(path)


def image_grid(images, titles, correct, path, columns=4):
    """Shows images in a grid, each titled, the title green or red.

    Args:
        images: uint8 array `(n, height, width, 3)`.
        titles: One title per image.
        correct: One bool per image (green title if True, else red).
        path: PNG file to write.
    """
    rows = max(1, -(-len(images) // columns))
    figure = _figure(2.2 * columns, 2.4 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, title, ok in zip(axes, images, titles, correct):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(_short(title, 40), fontsize=8, color=_GOOD if ok else _BAD)
    figure.savefig(path)


def confident_mistakes(texts, confidences, labels, path):
    """Bar chart of the most confident wrong predictions of a text model.

    Args:
        texts: The inputs (shortened for the axis).
        confidences: Probability given to the wrong label, per input.
        labels: A `true -> predicted` string per input.
        path: PNG file to write.
    """
    figure = _figure(10, 0.9 + 0.42 * max(1, len(texts)))
    ax = figure.subplots()
    positions = list(range(len(texts)))[::-1]
    ax.barh(positions, confidences, color=_BAD, alpha=0.75)
    ax.set_yticks(positions, [_short(t, 70) for t in texts], fontsize=8)
    for y, value, label in zip(positions, confidences, labels):
        ax.text(0.01, y, f" {_short(label, 60)}  {value:.3f}", va="center", fontsize=8, color="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of the (wrong) predicted label")
    figure.savefig(path)


def reliability_diagram(stages, path):
    """Plots reliability diagrams side by side (e.g. before and after calibration).

    Each panel shows, per bin of top-class probability, the accuracy of the
    examples in it (bars), the gap to their mean probability (red) and the
    diagonal of perfect calibration; below it, how many examples each bin
    holds.

    Args:
        stages: List of `(title, bins)`, `bins` a dict of lists `count`,
            `accuracy` and `confidence`, one entry per equal-width bin of
            [0, 1] (`dltool.tasks.calibration.reliability`).
        path: PNG file to write.
    """
    import numpy as np

    figure = _figure(4.2 * len(stages), 5.0)
    axes = figure.subplots(2, len(stages), squeeze=False, sharex=True,
                           gridspec_kw={"height_ratios": [3, 1]})
    for column, (title, bins) in enumerate(stages):
        count = np.asarray(bins["count"])
        accuracy, confidence = np.asarray(bins["accuracy"]), np.asarray(bins["confidence"])
        width = 1.0 / len(count)
        centers = (np.arange(len(count)) + 0.5) * width
        used = count > 0
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        top.bar(centers[used], accuracy[used], width=width, color="#0969da",
                edgecolor="white", label="accuracy")
        top.bar(centers[used], confidence[used] - accuracy[used], bottom=accuracy[used],
                width=width, color=_BAD, alpha=0.35, edgecolor=_BAD, label="gap to confidence")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_title(_short(title, 50))
        top.set_ylabel("accuracy")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centers, count, width=width, color="#656d76", edgecolor="white")
        bottom.set_xlabel("top-class probability")
        bottom.set_ylabel("examples")
    figure.savefig(path)


def precision_recall_curves(curves, names, path):
    """Plots each label's precision-recall curve in one panel.

    Args:
        curves: One entry per label: `{"recall": [...], "precision": [...]}`
            (`dltool.tasks.multilabel.pr_curves`), or None for a label
            without positive examples (left out).
        names: The label names, with their average precision in the legend
            when given as `(name, ap)` pairs.
        path: PNG file to write.
    """
    from matplotlib import colormaps

    figure = _figure(6.4, 4.8)
    ax = figure.subplots()
    # tab10's colours repeat after ten labels: tab20 then, and a dashed
    # line for every further twenty.
    palette = colormaps["tab10" if len(curves) <= 10 else "tab20"]
    for index, (curve, name) in enumerate(zip(curves, names)):
        if curve is None:
            continue
        label = name if isinstance(name, str) else f"{name[0]} (AP {name[1]:.3f})"
        ax.step([0.0, *curve["recall"]], [curve["precision"][0], *curve["precision"]],
                where="post", linewidth=1.2, label=_short(label, 30),
                color=palette(index % palette.N),
                linestyle=("-", "--", ":", "-.")[index // palette.N % 4])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left", fontsize=7, ncols=2)
    figure.savefig(path)


def _short(text, width):
    """One line of at most `width` characters; `$` escaped (not mathtext)."""
    line = textwrap.shorten(" ".join(str(text).split()), width=width, placeholder="…")
    return (line or "∅").replace("$", r"\$")
