"""docs/DESIGN.md documents the data contracts as built (replay/schemas/), and nothing a user reads
points at ../shared (the workplace's copy, which users do not have)."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from shadowreplay.cli import VERBS, build_parser
from shadowreplay.replay.schemas import results, telemetry, traffic_log
from shadowreplay.replay.schemas.manifest import MANIFEST_SCHEMA_VERSION, Counts, Manifest, Selection, SweepPoint
from tests.support.paths import REPO

DESIGN = (REPO / "docs" / "DESIGN.md").read_text()
FLAT = " ".join(DESIGN.split())


def type_text(field: pa.Field) -> str:
    text = {pa.float64(): "float64", pa.bool_(): "bool"}.get(field.type, str(field.type))
    return text.replace("list<item: double>", "list<float64>")


def section(title: str) -> str:
    start = FLAT.index(f"## {title}")
    end = FLAT.find(" ## ", start + 3)
    return FLAT[start : end if end > 0 else None]


def test_the_traffic_log_table_has_every_column_with_its_type_and_version():
    part = section("Traffic log")
    assert f"`schema_version` {traffic_log.SCHEMA_VERSION}" in part
    for field in traffic_log.TRAFFIC_LOG_SCHEMA:
        row = re.search(rf"\| `{field.name}` \| ([^|]+) \|", part)
        assert row, field.name
        documented = row.group(1).strip()
        expected = {"timestamp[us, tz=UTC]": "timestamp[us, UTC]", "list<item: int64>": "list<int64>"}.get(
            str(field.type), str(field.type)
        )
        assert documented.startswith(expected), (field.name, documented)
        assert ("null" in documented) == field.nullable, field.name


@pytest.mark.parametrize(
    ("title", "schema", "version"),
    [
        ("Results", results.RESULTS_SCHEMA, results.SCHEMA_VERSION),
        ("Telemetry", telemetry.TELEMETRY_SCHEMA, telemetry.SCHEMA_VERSION),
    ],
)
def test_results_and_telemetry_list_every_column_with_its_type(title, schema, version):
    part = section(title)
    assert f"`schema_version` {version}" in part
    types = part[part.index("Types as built") :]
    for field in schema:
        match = re.search(rf"`{field.name}` {re.escape(type_text(field))}( not null)?(?=[ ,.;(])", types)
        assert match, (title, field.name)
        assert bool(match.group(1)) == (not field.nullable) or "every column not null" in types, (title, field.name)
    listed = re.findall(r"`([a-z0-9_]+)` (?:string|int16|int32|bool|float64|list<)", types)
    assert listed == schema.names, title  # no column documented that the schema lacks, in the schema's order


def test_the_manifest_section_names_every_field():
    part = section("Manifest")
    assert f"`schema_version` {MANIFEST_SCHEMA_VERSION}" in part
    for model in (Manifest, Selection, Counts, SweepPoint):
        for name in model.model_fields:
            assert f"`{name}`" in part, (model.__name__, name)


def test_nothing_a_user_reads_points_at_shared():
    texts = {"README.md": (REPO / "README.md").read_text(), "docs/DESIGN.md": DESIGN}
    parser = build_parser()
    texts["shadowreplay --help"] = parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    for verb in VERBS:
        texts[f"{verb} --help"] = subparsers.choices[verb].format_help()
    for path in (REPO / "docs").glob("*.md"):
        texts[str(path.relative_to(REPO))] = path.read_text()
    for name, text in texts.items():
        assert "../shared" not in text and "shared/DESIGN" not in text, name
