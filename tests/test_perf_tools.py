"""The measurement tools' home (``ramen_jax/perf/``): one flag style, flags only in the tool
modules, and the pieces they share (synthetic batches, XLA's memory figure)."""

import ast
import pathlib
import types

import jax
import numpy as np
import pytest
from test_time_buckets import batches

from ramen_jax import sensors
from ramen_jax.batch import Batch, HostBatch, build_layout
from ramen_jax.data import pipeline
from ramen_jax.perf import compiled as compiled_lib
from ramen_jax.perf import synthetic
from ramen_jax.training import precompile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PERF = ROOT / "ramen_jax" / "perf"
TOOLS = {"step_bench", "data_bench", "aot_check", "compile_check"}


def _flag_names(tree: ast.Module) -> list[str]:
    """First argument of every ``*.DEFINE_*("name", ...)`` call of a module."""
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("DEFINE")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def _imported_modules(tree: ast.Module) -> set[str]:
    """Dotted names of the modules a file imports (``from a import b`` counts ``a.b`` too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def test_only_the_tool_modules_define_flags_and_nothing_imports_them():
    """Two tool modules cannot be imported in one process (both define ``--config``), so what
    a tool shares lives in plain modules that define no flag, and no module imports a tool."""
    defining = {}
    for path in PERF.glob("*.py"):
        names = _flag_names(ast.parse(path.read_text()))
        if names:
            defining[path.stem] = names
    assert set(defining) == TOOLS
    tools = {f"ramen_jax.perf.{tool}" for tool in TOOLS}
    for path in [*ROOT.glob("ramen_jax/**/*.py"), *ROOT.glob("tests/*.py")]:
        assert not _imported_modules(ast.parse(path.read_text())) & tools, path


def test_tool_flags_have_underscore_names_and_share_names_for_shared_meanings():
    defining = {p.stem: _flag_names(ast.parse(p.read_text())) for p in PERF.glob("*.py")}
    defining = {tool: names for tool, names in defining.items() if names}
    for tool, names in defining.items():
        assert all(name.isidentifier() and name == name.lower() for name in names), (tool, names)
        assert "config" in names, tool
    # the same meaning, the same name: what a tool counts; the pipeline's worker processes
    assert "steps" in defining["step_bench"] and "steps" in defining["compile_check"]
    assert "batches" in defining["data_bench"] and "workdir" in defining["compile_check"]
    assert "num_workers" in defining["data_bench"]


def test_synthetic_batch_has_a_run_step_shape_and_valid_dates():
    step_batches = batches()  # token buckets and several time buckets
    dataset = step_batches.datasets[0]
    run_signatures = {pipeline.signature(b) for b in precompile.step_shapes(step_batches)}
    rng = np.random.default_rng(0)
    for step in range(6):
        draw = step_batches.draw(step)
        batch = synthetic.random_batch(step_batches, 0, draw.effective_gsd, draw.kept, rng)
        assert pipeline.signature(batch) in run_signatures  # compiles as a run's step does
        layout = step_batches.layout(0, draw.effective_gsd, draw.kept)  # the draw's own
        pairs = zip(jax.tree.leaves(batch.batch.layout), jax.tree.leaves(layout), strict=True)
        assert all(ours is real for ours, real in pairs)
        for name, dates in batch.batch.dates.items():
            assert dates.dtype == np.int32 and np.all(np.diff(dates, axis=1) > 0), name
            assert batch.batch.time_valid[name].all()
        slots = {name: x.shape[1] for name, x in batch.batch.pixels.items()}
        assert slots == {s.name: max(dataset.time_buckets) if s.time_series else 1
                         for s in dataset.specs}  # fmt: skip
    pixels = np.concatenate([x.ravel() for x in batch.batch.pixels.values()])
    assert abs(pixels.mean()) < 0.05 and pixels.std() == pytest.approx(1, abs=0.05)


def test_filled_replaces_only_abstract_arrays():
    spec = sensors.modality("a", "optical", [490], 10.0, 4)
    abstract = HostBatch(
        "toy",
        Batch(
            pixels={"a": jax.ShapeDtypeStruct((2, 3, 4, 4, 1), np.float32)},
            dates={"a": jax.ShapeDtypeStruct((2, 3), np.int32)},
            time_valid={"a": jax.ShapeDtypeStruct((2, 3), np.bool_)},
            layout=build_layout([spec], ["a"], 10.0),
        ),
    )
    out = synthetic.filled(abstract, np.random.default_rng(1))
    assert out.batch.layout.token_valid is abstract.batch.layout.token_valid
    assert out.dataset == "toy"
    batch = out.batch
    np.testing.assert_array_equal(batch.dates["a"], [[20, 40, 60], [20, 40, 60]])
    assert batch.time_valid["a"].dtype == np.bool_ and batch.time_valid["a"].all()
    assert batch.pixels["a"].shape == (2, 3, 4, 4, 1) and batch.pixels["a"].dtype == np.float32


MEMORY_FIELDS = ("peak_memory", "argument_size", "output_size", "temp_size", "alias_size")


def _fake_compiled(peak, arguments=100, outputs=20, temp=7, alias=30, cost=None):
    """An object answering as a compiled program does, with XLA's memory analysis given."""
    sizes = zip(MEMORY_FIELDS, (peak, arguments, outputs, temp, alias), strict=True)
    stats = types.SimpleNamespace(**{f"{field}_in_bytes": n for field, n in sizes})
    return types.SimpleNamespace(memory_analysis=lambda: stats, cost_analysis=lambda: cost)


def test_peak_bytes_is_the_backends_peak_else_live_buffers_less_donated_aliases():
    assert compiled_lib.peak_bytes(_fake_compiled(peak=4096)) == 4096
    assert compiled_lib.peak_bytes(_fake_compiled(peak=0)) == 100 + 20 + 7 - 30
    assert compiled_lib.live_bytes(_fake_compiled(peak=4096)) == 100 + 20 + 7 - 30
    matmul = jax.jit(lambda x: x @ x).lower(np.ones((64, 64), np.float32)).compile()
    assert compiled_lib.live_bytes(matmul) >= 2 * 64 * 64 * 4  # argument and result
    assert compiled_lib.cost(matmul)["flops"] == pytest.approx(2 * 64**3, rel=0.01)
    assert compiled_lib.cost(_fake_compiled(0, cost=[{"flops": 3.0}])) == {"flops": 3.0}
