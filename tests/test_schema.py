"""One versioned JSON schema (ksminspect/schema.json): every command's
document on every dump validates against it, and the README's table of it
is generated from it (python3 tests/test_schema.py rewrites that table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ALL_DUMPS, REFUSED_DUMPS, command_lines, run_on

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- schema table: python3 tests/test_schema.py -->", "<!-- end of schema table -->"
READABLE = [d for d in ALL_DUMPS if d.sysfs and d not in REFUSED_DUMPS]


def validator():
    import jsonschema

    from ksminspect.commands.records import schema

    root = schema()
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root, format_checker=None)


def assert_valid(document: dict, name: str) -> None:
    errors = sorted(validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                                 for e in errors[:10])


@pytest.mark.parametrize("target", READABLE, ids=lambda d: d.name)
def test_every_command_on_every_dump_follows_the_schema(target, tmp_path) -> None:
    from ksminspect.commands.records import SCHEMA_VERSION

    seen, refused = set(), set()
    for line in command_lines(target):
        result = run_on(target, *line, "-f", "json")
        if result.exit_code == 2 and line[0] in ("page", "explain"):
            # e.g. no pfn_to_page() for this kernel, no RAM at that pfn: said, not a document
            assert result.stderr.startswith("ksminspect: ") and result.stderr.count("\n") == 1
            refused.add(line[0])
            continue
        assert result.exit_code in (0, 1), (line, result.stderr)
        document = json.loads(result.stdout)
        assert document["schema_version"] == SCHEMA_VERSION
        assert_valid(document, " ".join(line))
        seen.add(document["document"])
    for name in ("before", "after"):
        assert run_on(target, "snapshot", str(tmp_path / f"{name}.json")).exit_code == 0
    snapshot = json.loads((tmp_path / "before.json").read_text())
    assert_valid(snapshot, "snapshot")
    result = run_on(target, "diff", str(tmp_path / "before.json"), str(tmp_path / "after.json"), "-f", "json")
    assert_valid(json.loads(result.stdout), "diff")
    assert seen | refused | {"snapshot", "diff"} >= {
        "summary", "mm", "rmap", "stable-tree", "unstable-tree", "page", "check", "snapshot", "diff"}


def test_cache_list_follows_the_schema(tmp_path, monkeypatch) -> None:
    from conftest import run_cli

    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path))
    (tmp_path / "a-dump").write_bytes(b"x" * 10)
    result = run_cli("cache", "-f", "json")
    document = json.loads(result.stdout)
    assert_valid(document, "cache")
    assert document["entries"][0]["bytes"] == 10 and document["bytes"] == 10


def test_one_record_for_one_thing() -> None:
    """An rmap_item, a stable node, an mm slot and a finding are each one
    definition, referred to wherever they appear."""
    from ksminspect.commands.records import schema

    text = json.dumps(schema())
    for record in ("rmap_item", "stable_node", "mm_slot", "finding", "cursor", "dump"):
        assert text.count(f'"#/$defs/{record}"') >= 1
    # addresses, pfns, offsets and checksums are hex strings, never integers
    fields = schema()["$defs"]["item_fields"]["properties"]
    assert all(fields[k] == {"$ref": "#/$defs/hex"} or fields[k].get("$ref") == "#/$defs/hex"
               for k in ("anon_vma", "offset", "oldchecksum", "head", "rb_parent"))


def markdown() -> str:
    """The README's table of the schema: a row per document and record."""
    from ksminspect.commands.records import schema

    root = schema()
    rows = ["| document or record | what it is | keys |", "| --- | --- | --- |"]
    for name, d in root["$defs"].items():
        properties = d.get("properties") or next(
            (o["properties"] for o in d.get("oneOf", []) if "properties" in o), None)
        if not properties or "description" not in d:
            continue
        keys = []
        for key, p in properties.items():
            if key in ("schema_version", "document"):
                continue
            ref = p.get("$ref") or p.get("items", {}).get("$ref") if isinstance(p, dict) else None
            kind = ref.rsplit("/", 1)[1] if ref else None
            shown = f"`{key}`"
            if kind in root["$defs"] and "description" in root["$defs"][kind]:
                shown += f" ({'list of ' if 'items' in p else ''}{kind})"
            if isinstance(p, dict) and "enum" in p:
                shown += f" ({', '.join(str(v) for v in p['enum'] if v is not None)})"
            if isinstance(p, dict) and p.get("description"):
                shown += f": {p['description']}"
            keys.append(shown)
        rows.append(f"| `{name}` | {d['description']} | {'; '.join(keys)} |")
    return "\n".join(rows)


def test_readme_schema_table_is_the_schema() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == markdown(), "the README's schema table is out of date: python3 tests/test_schema.py"


if __name__ == "__main__":  # rewrite the README's table from the schema
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + markdown() + "\n" + END + rest.split(END, 1)[1])
