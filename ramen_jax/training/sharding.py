"""Mesh and logical-axis sharding: the config maps logical axis names to mesh axes.

Model code names logical axes only (``embed``, ``mlp``, ``qkv``, ``heads``, ``dec_embed``,
``batch``...; see ``ramen_jax.model.layers``). The config supplies the mesh shape
(``data``, ``fsdp``, ``tensor``; ``-1`` = the remaining devices), how many slices the ``data``
axis spans over the data-centre network (``dcn_data``, multi-slice TPU) and ``sharding_rules``
(``[logical, mesh axis or list of mesh axes or None]``, first match wins). A dimension that a
mesh axis does not divide is replicated instead, so odd widths (the 4-way gate, 16-wide L-TAE
query) never fail to shard. Parameters are created directly with their sharding
(``jax.eval_shape`` -> shardings -> ``jit(init, out_shardings=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import NamedSharding, PartitionSpec

from ramen_jax.batch import Batch
from ramen_jax.data.plan import BatchShards

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, device_count: int) -> tuple[int, ...]:
    """Sizes of (data, fsdp, tensor) for ``device_count`` devices; ``-1`` takes the rest."""
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    named = dict(zip(MESH_AXES, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {named}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % known:
            raise ValueError(f"{device_count} devices cannot fill mesh {named}")
        sizes[sizes.index(-1)] = device_count // known
    if math.prod(sizes) != device_count:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
            f"{math.prod(sizes)} devices, {device_count} available"
        )
    return tuple(sizes)


AUTO = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)


def make_mesh(mesh_config, devices: Sequence | None = None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_config, len(devices))
    slices = int(mesh_config.get("dcn_data", 1))
    if slices == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=AUTO, devices=devices)
    grid = hybrid_device_grid(shape, slices, devices)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=AUTO)


def hybrid_device_grid(shape: Sequence[int], slices: int, devices: Sequence) -> np.ndarray:
    """The ``(data, fsdp, tensor)`` device grid of a mesh whose ``data`` axis spans ``slices``
    slices: every slice holds a ``(data / slices, fsdp, tensor)`` block of its own devices
    (linked by ICI), stacked along ``data``, so only the data-parallel reductions (gradients,
    metrics) cross the slower data-centre network (DCN).

    Slices are the devices' ``slice_index`` on multi-slice TPU (and in a multi-slice
    ``jax.experimental.topologies`` description), else the processes when there is one per
    slice, else (simulated CPU devices in one process) consecutive blocks of the device list.
    """
    data, *inner = shape
    if slices < 1 or data % slices:
        raise ValueError(f"mesh.dcn_data={slices} must divide the data axis ({data})")
    per_slice, dcn = (data // slices, *inner), (slices, 1, 1)
    if hasattr(devices[0], "slice_index"):
        found = len({d.slice_index for d in devices})
        if found != slices:
            raise ValueError(f"mesh.dcn_data={slices}, but the devices span {found} slice(s)")
        return mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices)
    if len({d.process_index for d in devices}) == slices:
        return mesh_utils.create_hybrid_device_mesh(
            per_slice, dcn, devices, process_is_granule=True
        )
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    size = len(ordered) // slices
    blocks = [
        np.array(ordered[i * size : (i + 1) * size]).reshape(per_slice) for i in range(slices)
    ]
    return np.concatenate(blocks, axis=0)


def abstract_mesh(mesh_config, device_count: int) -> jax.sharding.AbstractMesh:
    """The mesh of a topology that is not attached (shardings only, no compilation)."""
    return jax.sharding.AbstractMesh(
        mesh_shape(mesh_config, device_count), MESH_AXES, axis_types=AUTO
    )


def _rule_table(rules) -> dict:
    table = {}
    for logical, mesh_axes in rules:
        if logical not in table:
            table[logical] = (
                tuple(mesh_axes)
                if isinstance(mesh_axes, (list, tuple))
                else ((mesh_axes,) if mesh_axes else ())
            )
    return table


def logical_to_mesh(spec: PartitionSpec, shape: Sequence[int], rules, mesh) -> PartitionSpec:
    """Maps a logical PartitionSpec to mesh axes, replicating what cannot be split evenly."""
    table = _rule_table(rules)
    used: set = set()
    out = []
    for dim, logical in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = tuple(a for a in table.get(logical, ()) if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def state_shardings(abstract_model, rules, mesh):
    """NamedShardings for ``(params, batch_stats)`` as plain nested dicts."""

    def shardings(var_type):
        state = nnx.state(abstract_model, var_type)
        specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
        shapes = nnx.to_pure_dict(state)
        return jax.tree.map(
            lambda spec, x: NamedSharding(mesh, logical_to_mesh(spec, x.shape, rules, mesh)),
            specs,
            shapes,
            is_leaf=lambda x: isinstance(x, PartitionSpec),
        )

    return shardings(nnx.Param), shardings(nnx.BatchStat)


def batch_sharding(mesh, rules) -> NamedSharding:
    """Sharding of batch-major arrays: the leading axis over the ``batch`` rule's mesh axes."""
    axes = tuple(a for a in _rule_table(rules).get("batch", ()) if mesh.shape[a] > 1)
    lead = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, PartitionSpec(lead))


def batch_shards(mesh, rules) -> int:
    axes = _rule_table(rules).get("batch", ())
    return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def process_batch_shards(mesh, rules) -> BatchShards:
    """The batch shards whose rows this process's devices hold (``BatchShards``).

    Read off the batch sharding itself, so it is right for every mesh the config can express:
    the batch split over devices of several processes, or replicated across processes along an
    axis that does not split it. A process whose devices hold rows that are not contiguous in
    the batch (a device order no ``jax.make_mesh`` produces) is refused.
    """
    count = batch_shards(mesh, rules)
    indices = batch_sharding(mesh, rules).addressable_devices_indices_map((count,))
    held = sorted({i for index in indices.values() for i in range(count)[index[0]]})
    if held != list(range(held[0], held[-1] + 1)):
        raise ValueError(
            f"process {jax.process_index()} holds batch shards {held} of {count} on mesh "
            f"{dict(mesh.shape)}: not one contiguous block; order the devices by process"
        )
    return BatchShards(held[0], held[-1] + 1, count)


def device_batch(batch: Batch, mesh, rules) -> Batch:
    """Host batch (the rows of this process's ``process_batch_shards``) -> global jax arrays:
    batch arrays split over the batch axes, the layout (identical on every process)
    replicated."""
    split = batch_sharding(mesh, rules)
    rep = replicated(mesh)
    shards = process_batch_shards(mesh, rules)
    global_rows = batch.batch_size * shards.count // (shards.stop - shards.first)

    def put(sharding, batch_major):
        def one(x):
            x = np.asarray(x)
            shape = (global_rows, *x.shape[1:]) if batch_major else x.shape
            return jax.make_array_from_process_local_data(sharding, x, shape)

        return one

    arrays = batch.map_samples(put(split, True))
    return arrays.replace(layout=jax.tree.map(put(rep, False), batch.layout))
