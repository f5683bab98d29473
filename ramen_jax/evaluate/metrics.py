"""Evaluation metrics (NumPy): average precision, F1, accuracy, IoU.

``average_precision`` follows the usual (scikit-learn's) definition: the step-wise area under
the precision-recall curve, one step per distinct score, tied scores forming one threshold,
no interpolation.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: ``scores`` ``[n]``, ``positives`` ``[n]`` bool (at least one True)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores, np.float64)[order]
    hits = np.asarray(positives, bool)[order]
    last_of_threshold = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(hits) - 1]
    true_positives = np.cumsum(hits)[last_of_threshold]
    precision = true_positives / (last_of_threshold + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP over the classes with at least one positive: ``[n, K]`` each."""
    targets = np.asarray(targets) > 0.5
    present = np.flatnonzero(targets.any(axis=0))
    if present.size == 0:
        return float("nan")
    return float(np.mean([average_precision(scores[:, k], targets[:, k]) for k in present]))


def micro_f1(predicted: np.ndarray, targets: np.ndarray) -> float:
    predicted, targets = np.asarray(predicted, bool), np.asarray(targets) > 0.5
    true_positives = np.sum(predicted & targets)
    wrong = np.sum(predicted ^ targets)
    return float(2 * true_positives / max(2 * true_positives + wrong, 1))


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def mean_iou(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes that occur in ``labels`` or ``predicted`` (1-D int arrays)."""
    pairs = np.asarray(labels) * num_classes + np.asarray(predicted)
    confusion = np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)
    true_positives = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positives
    seen = union > 0
    return float(np.mean(true_positives[seen] / union[seen]))
