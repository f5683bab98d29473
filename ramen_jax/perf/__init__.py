"""Every measurement tool of the project, one home and one flag style (absl, underscore names).

Commands (only these modules define flags, and nothing imports them: two in one process would
define ``--config`` twice):

- ``python -m ramen_jax.perf.step_bench``: a training step's time, FLOPs, MFU, memory, compiles;
- ``python -m ramen_jax.perf.data_bench``: the input pipeline's speed, padding and batch shapes;
- ``python -m ramen_jax.perf.aot_check``: memory and roofline speed on a TPU topology, ahead of
  time, without the hardware;
- ``python -m ramen_jax.perf.compile_check``: the compile count of a long mixed run and of its
  restart with the persistent cache.

Shared flags mean the same in every tool: ``--config`` (plus ``--config.FIELD=...``
overrides), ``--workdir`` (where the tool writes), ``--steps`` (training steps) or
``--batches`` (input batches). Every tool ends its output with one JSON line and reports a
user's mistake as one ``error:`` line (``ramen_jax.cli``).

Plain modules the tools share (importable together, they define no flags): ``synthetic``
(random batches of a step's real shapes), ``compiled`` (XLA's peak memory and cost analysis),
``flops`` (analytic FLOPs), ``step_timing``, ``pipeline_tally`` and ``topology`` (what each
tool measures).
"""
