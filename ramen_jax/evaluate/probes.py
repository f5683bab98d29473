"""Frozen-feature probes (k-NN, linear) and the tasks they are scored on.

Tasks (``TASKS``) turn features + labels into rows (one per sample, or one per token-grid
pixel for segmentation) with one-hot / multi-hot targets, and score per-class scores:

- ``multilabel``: mAP (macro, over classes present in the test set) and micro-F1 at 0.5;
- ``multiclass``: accuracy;
- ``segmentation``: mIoU and pixel accuracy on the token grid. Label maps are brought to the
  ``s x s`` grid by majority vote of the label pixels whose centres fall in each cell
  (ignored pixels, i.e. negative labels, do not vote; a cell without a vote is ignored).

Probes (``PROBES``), each ``fit(train_x, train_targets, loss, options) -> predict(test_x)``:

- ``knn``: features centred on the training mean and L2-normalised; the k most cosine-similar
  training rows vote with weights ``exp(similarity / temperature)`` (as in DINO's k-NN
  evaluation); scores = weighted mean of their targets.
- ``linear``: logistic regression on standardised features (sigmoid per class for
  multi-label, softmax otherwise) with L2 penalty ``weight_decay``, fitted full-batch by
  Nesterov-accelerated gradient descent for ``steps`` iterations with step ``1 / L`` (L: the
  gradient's Lipschitz constant, from the loss's curvature bound and a power iteration on the
  features). Chosen over L-BFGS (``optax.lbfgs``) because its line search takes several times
  longer to compile, which dominates on CPU; the problem is convex, so both reach the same
  optimum, this one to within what the accuracy of a probe can tell. Training rows are padded
  with zero weight to ``pad_rows`` (rounded up to a power of two), so every label-efficiency
  draw shares the compilation of the full training set's size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ramen_jax.evaluate import metrics
from ramen_jax.evaluate.datasets import MULTICLASS, MULTILABEL, SEGMENTATION

KNN_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class ProbeOptions:
    k: int = 20
    temperature: float = 0.07
    weight_decay: float = 1e-3
    steps: int = 500
    max_train_rows: int = 100_000  # per-pixel rows kept for fitting (segmentation)


# ----------------------------------------------------------------------------- tasks


def labels_to_grid(labels: np.ndarray, side: int) -> np.ndarray:
    """``[N, H, W]`` int labels -> ``[N, side, side]`` by majority vote (-1: no vote)."""
    count, height, width = labels.shape
    rows = np.floor((np.arange(height) + 0.5) * side / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * side / width).astype(int)
    classes = int(labels.max()) + 1 if labels.max() >= 0 else 1
    votes = np.zeros((count, side, side, classes), np.int64)
    n, r, c = np.nonzero(labels >= 0)
    np.add.at(votes, (n, rows[r], cols[c], labels[n, r, c]), 1)
    return np.where(votes.any(axis=-1), votes.argmax(axis=-1), -1)


def _sample_rows(features, labels, num_classes):
    if labels.ndim == 1:
        return features, np.eye(num_classes, dtype=np.float32)[labels], labels
    return features, labels.astype(np.float32), labels


def _pixel_rows(features, labels, num_classes):
    grid = labels_to_grid(labels, features.shape[1]).reshape(-1)
    keep = grid >= 0
    rows = features.reshape(-1, features.shape[-1])[keep]
    return rows, np.eye(num_classes, dtype=np.float32)[grid[keep]], grid[keep]


def _multilabel_metrics(scores, labels, num_classes):
    return {
        "mAP": metrics.mean_average_precision(scores, labels),
        "F1_micro": metrics.micro_f1(scores >= 0.5, labels),
    }


def _multiclass_metrics(scores, labels, num_classes):
    return {"accuracy": metrics.accuracy(scores.argmax(axis=1), labels)}


def _segmentation_metrics(scores, labels, num_classes):
    predicted = scores.argmax(axis=1)
    return {
        "mIoU": metrics.mean_iou(predicted, labels, num_classes),
        "pixel_accuracy": metrics.accuracy(predicted, labels),
    }


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    loss: str  # key of LOSSES
    rows: Callable  # (features, labels, K) -> (row features, targets [M, K], row labels)
    score: Callable  # (scores [M, K], row labels, K) -> {metric: value}
    primary: str  # the metric curves and reports lead with


TASKS = {
    MULTILABEL: Task(MULTILABEL, "sigmoid", _sample_rows, _multilabel_metrics, "mAP"),
    MULTICLASS: Task(MULTICLASS, "softmax", _sample_rows, _multiclass_metrics, "accuracy"),
    SEGMENTATION: Task(SEGMENTATION, "softmax", _pixel_rows, _segmentation_metrics, "mIoU"),
}


# ----------------------------------------------------------------------------- probes


@functools.partial(jax.jit, static_argnames=("k",))
def _knn_chunk(train, targets, test, k, temperature):
    top, index = jax.lax.top_k(test @ train.T, k)
    weights = jnp.exp((top - top[:, :1]) / temperature)
    votes = jnp.einsum("mk,mkc->mc", weights, targets[index])
    return votes / jnp.sum(weights, axis=1, keepdims=True)


def _unit_rows(x, mean):
    x = np.asarray(x, np.float32) - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_knn(train_x, train_targets, loss: str, options: ProbeOptions, pad_rows: int = 0):
    del loss, pad_rows
    mean = np.asarray(train_x, np.float32).mean(axis=0)
    train = jnp.asarray(_unit_rows(train_x, mean))
    targets = jnp.asarray(train_targets, jnp.float32)
    k = min(options.k, len(train_x))

    def predict(test_x):
        test = _unit_rows(test_x, mean)
        chunks = [
            _knn_chunk(train, targets, jnp.asarray(test[i : i + KNN_CHUNK]), k, options.temperature)
            for i in range(0, len(test), KNN_CHUNK)
        ]
        return np.concatenate([np.asarray(c) for c in chunks])

    return predict


def _independent_logistic(logits, targets):
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)


# loss name -> (per-row loss, logits -> scores, bound on the loss's curvature in the logits)
LOSSES = {
    "sigmoid": (_independent_logistic, jax.nn.sigmoid, 0.25),
    "softmax": (optax.softmax_cross_entropy, functools.partial(jax.nn.softmax, axis=-1), 0.5),
}
POWER_ITERATIONS = 50
STEP_SAFETY = 1.1  # the power iteration approaches the top eigenvalue from below


@functools.partial(jax.jit, static_argnames=("loss", "steps"))
def _fit_linear(x, targets, weights, weight_decay, loss: str, steps: int):
    """Nesterov-accelerated gradient descent on the (convex) penalised logistic loss."""
    row_loss, _, curvature = LOSSES[loss]
    total = jnp.sum(weights)

    def objective(params):
        logits = x @ params["w"] + params["b"]
        data = jnp.sum(row_loss(logits, targets) * weights) / total
        return data + 0.5 * weight_decay * jnp.sum(params["w"] ** 2)

    # Step 1/L, L = curvature * top eigenvalue of the weighted design's Gram matrix / n + penalty.
    design = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    design = design * jnp.sqrt(weights)[:, None]

    def power(_, vector):
        vector = design.T @ (design @ vector)
        return vector / jnp.linalg.norm(vector)

    start = jnp.ones(design.shape[1], x.dtype) / jnp.sqrt(design.shape[1])
    vector = jax.lax.fori_loop(0, POWER_ITERATIONS, power, start)
    top = jnp.vdot(vector, design.T @ (design @ vector)) / total
    step_size = 1.0 / (STEP_SAFETY * (curvature * top + weight_decay))
    gradient = jax.grad(objective)

    def accelerate(k, carry):
        params, previous = carry
        momentum = k / (k + 3.0)
        ahead = jax.tree.map(lambda p, q: p + momentum * (p - q), params, previous)
        stepped = jax.tree.map(lambda a, g: a - step_size * g, ahead, gradient(ahead))
        return stepped, params

    zeros = {
        "w": jnp.zeros((x.shape[1], targets.shape[1]), x.dtype),
        "b": jnp.zeros((targets.shape[1],), x.dtype),
    }
    params, _ = jax.lax.fori_loop(0, steps, accelerate, (zeros, zeros))
    return params


def fit_linear(train_x, train_targets, loss: str, options: ProbeOptions, pad_rows: int = 0):
    x = np.asarray(train_x, np.float32)
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    rows = len(x)
    padded = max(16, 1 << (max(rows, pad_rows) - 1).bit_length())
    x_padded = np.zeros((padded, x.shape[1]), np.float32)
    x_padded[:rows] = (x - mean) / std
    targets = np.zeros((padded, train_targets.shape[1]), np.float32)
    targets[:rows] = train_targets
    weights = (np.arange(padded) < rows).astype(np.float32)
    params = _fit_linear(x_padded, targets, weights, options.weight_decay, loss, options.steps)
    activation = LOSSES[loss][1]

    def predict(test_x):
        test = (np.asarray(test_x, np.float32) - mean) / std
        return np.asarray(activation(test @ params["w"] + params["b"]))

    return predict


PROBES = {"knn": fit_knn, "linear": fit_linear}


def fit_probe(
    task_name: str,
    probe: str,
    train_features,
    train_labels,
    num_classes: int,
    options: ProbeOptions = ProbeOptions(),
    *,
    rng: np.random.Generator | None = None,
    pad_samples: int = 0,
) -> Callable:
    """Fits ``probe`` on the task's training rows; returns ``predict(test rows) -> scores``.

    ``pad_samples``: pad the training set as if it had this many samples (see ``fit_linear``).
    """
    task = TASKS[task_name]
    train_x, train_targets, _ = task.rows(train_features, train_labels, num_classes)
    if len(train_x) > options.max_train_rows:
        rng = rng or np.random.default_rng(0)
        keep = rng.choice(len(train_x), options.max_train_rows, replace=False)
        train_x, train_targets = train_x[keep], train_targets[keep]
    rows_per_sample = int(np.prod(np.shape(train_features)[1:-1]))  # s * s per-pixel, else 1
    pad_rows = min(pad_samples * rows_per_sample, options.max_train_rows)
    return PROBES[probe](train_x, train_targets, task.loss, options, pad_rows)


def score_probe(task_name: str, predict: Callable, test_features, test_labels, num_classes: int):
    """The task's metrics (``{name: value}``) of a fitted probe on test features."""
    task = TASKS[task_name]
    test_x, _, test_rows = task.rows(test_features, test_labels, num_classes)
    return task.score(predict(test_x), test_rows, num_classes)


def evaluate_probe(
    task_name: str,
    probe: str,
    train_features,
    train_labels,
    test_features,
    test_labels,
    num_classes: int,
    options: ProbeOptions = ProbeOptions(),
    **fit_options,
) -> dict:
    """``fit_probe`` then ``score_probe``."""
    predict = fit_probe(
        task_name, probe, train_features, train_labels, num_classes, options, **fit_options
    )
    return score_probe(task_name, predict, test_features, test_labels, num_classes)
