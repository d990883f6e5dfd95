"""Precision, recall and F1 of one class from its counts: the one rule the
single-label and the multi-label evaluations share."""


def class_figures(name, true_positives, predicted, support):
    """One class's row of an evaluation's per-class table.

    Args:
        name: The class (label) name.
        true_positives: Examples of the class predicted as it.
        predicted: Examples predicted as the class.
        support: Examples of the class.

    Returns:
        A dict: `name`, `precision`, `recall`, `f1` (0 where undefined) and
        `support`.
    """
    precision = float(true_positives / predicted) if predicted else 0.0
    recall = float(true_positives / support) if support else 0.0
    return {"name": name, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "support": int(support)}
