"""The import rules of docs/architecture.md, and the batch contract's one home."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ramen_jax"
CORE = {"batch", "sensors", "geometry", "storage", "cli", "logs"}  # ramen_jax/<name>.py
# each area and the areas it may import (core is open to every one)
ALLOWED = {
    "core": set(),
    "model": set(),
    "data": set(),
    "training": {"model", "data"},
    "convert": {"model"},
    "encode": {"model", "data"},
    "evaluate": {"model", "data", "encode"},
    "perf": {"model", "data", "training"},
    "train": {"training"},  # ramen_jax/train.py, the training entry point
}


def area_of(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem if path.stem == "train" else "core"


def imported_areas(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "data_prep":
                yield "data_prep"
            elif parts[0] == "ramen_jax" and len(parts) > 1:
                if parts[1] in CORE or parts[1] == "__init__":
                    yield "core"
                elif (PACKAGE / parts[1]).is_dir() or parts[1] == "train":
                    yield parts[1]


def test_every_area_imports_only_the_areas_below_it_and_never_data_prep():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        area = area_of(path)
        for imported in set(imported_areas(path)):
            if imported not in {area, "core"} | ALLOWED[area]:
                wrong.append(f"{path.relative_to(ROOT)} ({area}) imports {imported}")
    assert not wrong, wrong


def test_the_rule_sees_a_wrong_import(tmp_path):
    """The check above parses what it should: a model module importing training is caught."""
    fake = PACKAGE / "model" / "_probe_for_test.py"
    assert area_of(fake) == "model"
    module = tmp_path / "m.py"
    module.write_text("from ramen_jax.training import step\nimport data_prep.common\n")
    assert set(imported_areas(module)) == {"training", "data_prep"}


FIELDS = (
    "layout|pixels|dates|time_valid|token_modality|token_cell|token_row|token_col|token_valid|"
    "ts_token|ts_modality|ts_cell|ts_valid|kept|kept_rank|enc_scale|dec_scale|effective_gsd|"
    "num_keep|enc_resize|dec_resize|mask_index|grid_token|grid_series"
)
FIELD_BY_KEY = re.compile(r"(batch|layout|host\w*|b|out|arrays|micro)\[\"(" + FIELDS + r")\"\]")


def test_no_code_reads_a_batch_or_layout_field_by_string_key():
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("ramen_jax", "launch", "data_prep")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FIELD_BY_KEY.search(line)
    ]
    assert not hits, hits
    assert FIELD_BY_KEY.search('rows = batch["pixels"]["s2"].shape[0]')


def test_no_file_points_at_documents_outside_the_repository():
    outside = ("SPEC" + ".md", "KEYS" + ".md", "../" + "shared")
    hits = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(ROOT.rglob("*"))
        if path.is_file()
        and path.suffix in {".py", ".md", ".toml", ".txt", ".sh", ""}
        and ".git" not in path.parts
        and "fixtures" not in path.parts
        for name in outside
        if name in path.read_text(errors="ignore")
    ]
    assert not hits, hits
