"""The RAMEN model in Flax NNX (see docs/model.md).

``config`` (the architecture), ``build`` (the one way to create a model), ``weights`` (our
model directories and training checkpoints' weights), the modules (``mae``, ``encoder``,
``decoder`` and their layers) and the loss.
"""
