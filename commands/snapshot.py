"""ksminspect snapshot and diff: the whole decoded state as JSON, and what
changed between two snapshots (around a selftest run, say)."""

from __future__ import annotations

import json
from typing import Any, Optional

import click

from .records import (SCHEMA_VERSION, cursor_json, document, finding_json, item_template, mm_slot_json,
                      node_texts, utc)
from .render import JsonArray, echo_wrapped, emit, emit_json, emit_table, format_option


def take_snapshot(app) -> dict[str, Any]:
    from ksminspect.checks import run_checks
    from ksminspect.counters import read_counters, read_tunables
    from ksminspect.decode import STATE_NAMES
    from ksminspect.layout import wall_clock
    from ksminspect.mm import for_each_mm_slot, mm_owner
    from ksminspect.program import dump_description, kernel_release
    from ksminspect.scan import read_scan_cursor
    from ksminspect.session import session
    from ksminspect.stable import stable_columns
    from ksminspect.walk import WalkDamage

    import numpy as np

    prog = app.prog
    cursor = read_scan_cursor(prog)
    damage: list[str] = []
    slots = []
    c = session(prog).collect("stable_trees")
    try:
        for s in for_each_mm_slot(prog):
            slots.append(mm_slot_json(s, cursor))
            if s.damage:
                damage.append(s.damage.sentence())
    except WalkDamage as e:
        damage.append(e.damage.sentence())
    def item_texts():
        """Each item's short record, as json.dumps() writes it: a million
        items are no million dicts."""
        state_words = np.array(STATE_NAMES, object)
        for run in c.runs:
            owner = mm_owner(prog, run.mm)
            item = item_template(owner.pid, owner.comm)
            rows = slice(run.start, run.stop)
            yield from map(item.__mod__, zip(c.item_address[rows].tolist(), c.items["mm"][rows].tolist(),
                                             c.page_address(rows).tolist(),
                                             state_words[c.state[rows]].tolist()))

    items = JsonArray(item_texts(), c.walked)
    stable = stable_columns(prog)
    damage.extend(d.sentence() for d in stable.walk_damage[:1])
    pages = stable.pages()
    report = run_checks(prog, app.live)  # the same reads as the items above
    # a dump's own time (the kernel's clock when it was taken), not this run's
    clock = None if app.live else wall_clock(prog)
    return document("snapshot", {
        "kernel_release": kernel_release(prog),
        "live": app.live,
        "taken": utc(clock),
        "clock": "host" if clock is None else "kernel",
        "counters": read_counters(prog),
        "tunables": read_tunables(prog),
        "cursor": cursor_json(prog, cursor),
        "mm_slots": slots,
        "items": items,
        "stable_pages": JsonArray(node_texts(stable, pages), len(pages)),
        "findings": [finding_json(f) for f in report.findings],
        "damage": damage,
        "dump": dump_description(prog),
    })


@click.command("snapshot")
@click.argument("file", type=click.Path(dir_okay=False, writable=True, allow_dash=True))
@click.option("-f", "--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="A snapshot is JSON (taken, as on every command, for scripts that pass it).")
@click.pass_obj
def snapshot(app, file: str, fmt: str) -> None:
    """Write the full decoded KSM state as JSON to FILE ('-': stdout).

    Counters, tunables, the scan cursor, every mm slot and rmap_item, every
    stable page with its sharers, and check's findings. Compare two with
    'ksminspect diff'.

    \b
    Example:
      sudo ksminspect snapshot before.json; ./ksm_tests -M; sudo ksminspect snapshot after.json
    """
    if file != "-":  # a path that cannot be written is said before the walk
        import os

        from ksminspect.errors import KsmInspectError

        where = os.path.dirname(os.path.abspath(file))
        if not os.path.isdir(where):
            raise KsmInspectError(f"cannot write {file}: there is no directory {where}")
        if not os.access(where, os.W_OK):
            raise KsmInspectError(f"cannot write {file}: {where} is not writable")
    data = take_snapshot(app)
    if file == "-":
        emit_json(data)
    else:
        from ksminspect.errors import KsmInspectError

        try:
            with open(file, "w") as f:
                emit_json(data, f.write)
        except OSError as e:
            raise KsmInspectError(f"cannot write {file}: {e.strerror or e}") from None
        click.echo(f"ksminspect: snapshot of {len(data['items'])} rmap_items and "
                   f"{len(data['stable_pages'])} stable pages written to {file}", err=True)


def _load(path: str) -> dict[str, Any]:
    from ksminspect.errors import KsmInspectError

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise KsmInspectError(f"{path} cannot be read: {e.strerror or e}") from None
    except ValueError as e:  # json's errors, and bytes that are not text
        raise KsmInspectError(f"{path} is not a ksminspect snapshot: it is not JSON, or it was cut short "
                              f"({e})") from None
    if not isinstance(data, dict) or data.get("document") != "snapshot" and "ksminspect_snapshot" not in data:
        other = data.get("document") if isinstance(data, dict) else None
        raise KsmInspectError(f"{path} is not a ksminspect snapshot"
                              + (f": it is the output of ksminspect {other}; take one with 'ksminspect "
                                 f"snapshot FILE'" if isinstance(other, str) else ""))
    if data.get("schema_version") != SCHEMA_VERSION:
        raise KsmInspectError(f"{path} is a snapshot of another ksminspect (schema "
                              f"{data.get('schema_version', 0)}, this one reads {SCHEMA_VERSION}): "
                              f"take it again with this one")
    wrong = _unlike(data, _READ, "")
    if wrong:
        raise KsmInspectError(f"{path} is damaged or was edited: {wrong}; take the snapshot again")
    return data


# What diff reads of a snapshot (schema.json's "snapshot", in the types
# compare() needs): a list is [shape of each element].
_OPTIONAL_INT, _OPTIONAL_STR = (int, type(None)), (str, type(None))
_READ: dict[str, Any] = {
    "taken": str, "kernel_release": str, "counters": dict,
    "mm_slots": [{"pid": _OPTIONAL_INT, "comm": _OPTIONAL_STR, "exited": bool}],
    "items": [{"pid": _OPTIONAL_INT, "page_address": str, "state": str}],
    "findings": [{"check": str, "severity": str, "address": _OPTIONAL_STR, "message": str}],
    "stable_pages": [{"sharers": list}],
}


def _unlike(value: Any, shape: Any, where: str) -> Optional[str]:
    """Where *value* is not of *shape*, in words; None where it is."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'the document'} is not an object"
        for key, inner in shape.items():
            if key not in value:
                return f"{where + '.' if where else ''}{key} is missing"
            wrong = _unlike(value[key], inner, f"{where + '.' if where else ''}{key}")
            if wrong:
                return wrong
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is not a list"
        for i, element in enumerate(value):
            wrong = _unlike(element, shape[0], f"{where}[{i}]")
            if wrong:
                return wrong
        return None
    if not isinstance(value, shape) or (shape is int and isinstance(value, bool)):
        return f"{where} is {json.dumps(value)[:40]}, not {_TYPE_WORDS.get(shape, 'what a snapshot holds')}"
    return None


_TYPE_WORDS = {str: "a string", int: "a number", bool: "true or false", dict: "an object", list: "a list",
               _OPTIONAL_INT: "a number or null", _OPTIONAL_STR: "a string or null"}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What changed from snapshot *a* to snapshot *b*."""
    counters = {k: {"before": a["counters"].get(k), "after": b["counters"].get(k),
                    "delta": (b["counters"][k] - a["counters"][k]
                              if isinstance(a["counters"].get(k), int) and isinstance(b["counters"].get(k), int)
                              else None)}
                for k in list(b["counters"]) + [k for k in a["counters"] if k not in b["counters"]]
                if a["counters"].get(k) != b["counters"].get(k)}
    procs_a = {(s["pid"], s["comm"]) for s in a["mm_slots"]}
    procs_b = {(s["pid"], s["comm"]) for s in b["mm_slots"]}
    state_a = {(i["pid"], i["page_address"]): i["state"] for i in a["items"]}
    state_b = {(i["pid"], i["page_address"]): i["state"] for i in b["items"]}
    merged = sorted(k for k, s in state_b.items() if s == "stable" and state_a.get(k) != "stable")
    unmerged = sorted(k for k, s in state_a.items() if s == "stable" and state_b.get(k) != "stable")
    keys_a = {(f["check"], f["address"]) for f in a["findings"]}
    leaked = {
        "orphans": [f for f in b["findings"] if f["check"] == "orphans" and f["address"]
                    and (f["check"], f["address"]) not in keys_a],
        "exited_mm_slots": [s for s in b["mm_slots"] if s["exited"]],
        "stable_pages_without_sharers": [p for p in b["stable_pages"] if not p["sharers"]],
    }
    new_problems = [f for f in b["findings"] if f["severity"] != "info"
                    and (f["check"], f["address"]) not in keys_a]
    return {
        "before": {"taken": a["taken"], "clock": a.get("clock", "host"), "kernel_release": a["kernel_release"]},
        "after": {"taken": b["taken"], "clock": b.get("clock", "host"), "kernel_release": b["kernel_release"]},
        "counters": counters,
        "processes_appeared": [{"pid": p, "comm": c} for p, c in sorted(procs_b - procs_a, key=str)],
        "processes_gone": [{"pid": p, "comm": c} for p, c in sorted(procs_a - procs_b, key=str)],
        "merged": [{"pid": p, "page_address": addr} for p, addr in merged],
        "unmerged": [{"pid": p, "page_address": addr} for p, addr in unmerged],
        "leaked": leaked,
        "new_findings": new_problems,
    }


@click.command("diff")
@click.argument("before", type=click.Path(exists=True, dir_okay=False))
@click.argument("after", type=click.Path(exists=True, dir_okay=False))
@format_option
def diff(before: str, after: str, fmt: str) -> None:
    """Compare two snapshots: what was merged, unmerged or leaked.

    Needs no kernel: it reads the two JSON files of 'ksminspect snapshot'.

    \b
    Example:
      ksminspect diff before.json after.json
    """
    d = compare(_load(before), _load(after))
    a, b = d["before"], d["after"]
    if a["kernel_release"] != b["kernel_release"]:
        click.echo(f"ksminspect: warning: the snapshots are of different kernels "
                   f"({a['kernel_release']} and {b['kernel_release']}): objects and counters "
                   f"do not carry over", err=True)
    elif b["taken"] < a["taken"]:
        click.echo(f"ksminspect: warning: {after} was taken before {before} "
                   f"({b['taken']} < {a['taken']})", err=True)

    def table() -> None:
        echo_wrapped(f"before {d['before']['taken']} ({d['before']['kernel_release']}), "
                   f"after {d['after']['taken']} ({d['after']['kernel_release']})")
        missing = "(not in this kernel)"
        emit_table([[k, missing if v["before"] is None else v["before"],
                     missing if v["after"] is None else v["after"],
                     "" if v["delta"] is None else v["delta"]] for k, v in d["counters"].items()],
                   ["counter", "before", "after", "delta"])
        click.echo()
        for key in ("processes_appeared", "processes_gone"):
            names = ", ".join(f"{p['pid']} {p['comm']}" for p in d[key]) or "none"
            echo_wrapped(f"{key.replace('_', ' ')}: {names}")
        for key in ("merged", "unmerged"):
            by_pid: dict = {}
            for e in d[key]:
                by_pid[e["pid"]] = by_pid.get(e["pid"], 0) + 1
            echo_wrapped(f"{key}: {len(d[key])} pages"
                       + (" (" + ", ".join(f"pid {p}: {n}" for p, n in by_pid.items()) + ")" if by_pid else ""))
        leaked = d["leaked"]
        echo_wrapped(f"leaked: {len(leaked['orphans'])} orphaned objects, "
                   f"{len(leaked['exited_mm_slots'])} mm slots of exited processes, "
                   f"{len(leaked['stable_pages_without_sharers'])} stable pages without sharers")
        echo_wrapped(f"new findings (error or warning): {len(d['new_findings'])}")
        for f in d["new_findings"]:
            echo_wrapped(f"  {f['severity']} {f['check']}: {f['message']}")

    emit(fmt, "diff", d, table)
