"""``ramen_jax.evaluate``: frozen-encoder probes and reports (CLI in ``__main__``).

Modules: ``datasets`` (labelled data: the bundled BigEarthNet demo, ``data_prep`` records),
``features`` (encoding splits, missing-modality / band views), ``probes`` (k-NN and linear
probes, tasks), ``metrics``, ``reports`` (label-efficiency curve, robustness, cost table),
``outputs`` (CSV, PNG, text). See docs/evaluate.md.
"""
