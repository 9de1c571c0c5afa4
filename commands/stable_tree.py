"""ksminspect stable-tree: the stable trees drawn as chain -> dups -> sharers."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Optional

from ksminspect.decode import NodeKind

import click

from .params import COUNT, NID, PID, require_process, require_tree, say_nothing_matched
from .render import (JsonArray, emit_json, fail_if_walk_found_nothing, format_option, json_int,
                     progress, say_changed_while_read, say_damage)


# A sharer as json.dumps() writes it, made from the columns: a host has a
# million sharers, and dicts would cost more than the whole walk.
_SHARER = '{"item": "%#x", "mm": "%#x", %s, "page_address": "%#x", "state": "%s"}'


@lru_cache(maxsize=None)
def _owner_text(pid: Optional[int], comm: Optional[str]) -> str:
    return f'"pid": {json_int(pid)}, "comm": {json.dumps(comm)}'


def sharers_text(sharers) -> str:
    """The JSON texts of a node's :class:`~ksminspect.stable.Sharers`, comma-separated."""
    items, mms, pids, comms, pages, states = sharers.columns()
    return ", ".join(map(_SHARER.__mod__, zip(items, mms, map(_owner_text, pids, comms), pages, states)))


def node_text(e) -> str:
    """A stable tree entry as JSON text: the one definition of its keys."""
    chain = e.kind is NodeKind.CHAIN
    return (f'{{"node": "{e.node:#x}", "kind": "{e.kind.value}", "tree_nid": {json_int(e.tree_nid)}, '
            f'"nid": {"null" if chain else json_int(e.nid)}, '
            f'"kpfn": {json_int(e.kpfn)}, "rmap_hlist_len": {json_int(e.rmap_hlist_len)}, '
            f'"sharers": [{sharers_text(e.sharers) if e.sharers else ""}], '
            f'"dups": [{", ".join(map(node_text, e.dups))}], '
            f'"damage": {json.dumps([d.sentence() for d in e.damage]) if e.damage else "[]"}'
            + (f', "chain_prune_time": {e.chain_prune_time}}}' if e.chain_prune_time is not None else "}"))


def node_json(e) -> dict[str, Any]:
    return json.loads(node_text(e))


def _keep(e, min_sharers: int, pid: Optional[int]) -> bool:
    """Whether a node (or a chain, through its dups) passes the filters."""
    if e.dups:
        return any(_keep(d, min_sharers, pid) for d in e.dups)
    if len(e.sharers) < min_sharers:
        return False
    return pid is None or any(s.pid == pid for s in e.sharers)


def _filter(e, min_sharers: int, pid: Optional[int], all_dups: dict[int, int]):
    """Keep the dups that pass; remember how many the chain had."""
    if e.dups:
        all_dups[e.node] = len(e.dups)
        e.dups = [d for d in e.dups if _keep(d, min_sharers, pid)]
    return e


def totals(entries) -> dict[str, int]:
    """Counts comparable with the kernel's: pages_shared is one per page held
    (a plain node, a dup, a node on migrate_nodes), pages_sharing the further
    sharers of each."""
    pages = sharers = chains = dups = nodes = 0
    for e in entries:
        if e.kind.value == "chain":
            chains += 1
            dups += len(e.dups)
            held = [d for d in e.dups if d.sharers]
        else:  # a plain node, or a dup drawn alone (page on a dup)
            dups += e.kind.value == "dup"
            nodes += e.kind.value != "dup"
            held = [e] if e.sharers else []
        pages += len(held)
        sharers += sum(len(h.sharers) for h in held)
    return {"nodes": nodes, "chains": chains, "dups": dups, "pages_shared": pages,
            "pages_sharing": sharers - pages}


def _draw_sharers(e, prefix: str) -> None:
    for i, s in enumerate(e.sharers):
        last = i == len(e.sharers) - 1
        state = "" if s.state == "stable" else f"  [{s.state}!]"
        who = f"pid {s.pid} {s.comm}" if s.pid is not None else f"mm {s.mm:#x}"
        click.echo(f"{prefix}{'└── ' if last else '├── '}{who}  {s.page_address:#x}"
                   f"  item {s.item:#x}{state}")


def _describe(e, all_dups: dict[int, int]) -> str:
    nid = f" nid {e.nid}" if e.nid is not None else ""
    if e.kind.value == "chain":  # a chain's own nid is never set
        total = all_dups.get(e.node, len(e.dups))
        return f"chain {e.node:#x}  dups {len(e.dups)}" + (f" of {total}" if total != len(e.dups) else "")
    return (f"{e.kind.value} {e.node:#x}  kpfn {e.kpfn:#x}  sharers {len(e.sharers)}"
            f"{nid}{'' if e.rmap_hlist_len == len(e.sharers) else f'  rmap_hlist_len {e.rmap_hlist_len}!'}")


def draw(trees: dict, migrate: list, total: dict[str, int],
         all_dups: Optional[dict[int, int]] = None) -> None:
    all_dups = all_dups or {}
    for nid, entries in trees.items():
        click.echo(f"root_stable_tree[{nid}]: {len(entries)} entries")
        for i, e in enumerate(entries):
            last = i == len(entries) - 1
            click.echo(f"{'└── ' if last else '├── '}{_describe(e, all_dups)}")
            inner = "    " if last else "│   "
            for j, d in enumerate(e.dups):
                dlast = j == len(e.dups) - 1
                click.echo(f"{inner}{'└── ' if dlast else '├── '}{_describe(d, all_dups)}")
                _draw_sharers(d, inner + ("    " if dlast else "│   "))
            _draw_sharers(e, inner)
    click.echo(f"migrate_nodes: {len(migrate)} entries")
    for e in migrate:
        click.echo(f"└── {_describe(e, all_dups)}")
        _draw_sharers(e, "    ")
    click.echo(", ".join(f"{k} {v}" for k, v in total.items()))


@click.command("stable-tree")
@click.option("--nid", type=NID, help="Only root_stable_tree[NID].")
@click.option("--min-sharers", type=COUNT, default=0, help="Only pages with at least N sharers.")
@click.option("--pid", type=PID, help="Only pages that process PID shares.")
@format_option
@click.pass_obj
def stable_tree(app, nid: Optional[int], min_sharers: int, pid: Optional[int], fmt: str) -> None:
    """The stable trees: chain -> dups -> sharers, and migrate_nodes.

    Each entry shows its kpfn and sharers (pid, comm, page address); a chain
    shows its dups. Totals count KSM pages (pages_shared) and further sharers
    (pages_sharing) as the kernel does, over what is shown.

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz stable-tree --min-sharers 3
    """
    from ksminspect.session import session
    from ksminspect.stable import for_each_stable_tree_node
    from ksminspect.walk import WalkDamage

    require_process(app.prog, pid)
    require_tree(app.prog, nid)
    trees: dict[int, list] = {}
    migrate: list = []
    all_dups: dict[int, int] = {}
    damage = []
    walked = 0  # entries walked, before the filters
    try:
        for e in progress(for_each_stable_tree_node(app.prog), "stable nodes"):
            walked += 1
            if e.tree_nid is None:
                if _keep(e, min_sharers, pid):
                    migrate.append(e)
                continue
            if nid is not None and e.tree_nid != nid:
                continue
            bucket = trees.setdefault(e.tree_nid, [])
            if _keep(e, min_sharers, pid):
                bucket.append(_filter(e, min_sharers, pid, all_dups))
    except WalkDamage as e:
        damage.append(e.damage)
    shown = [e for entries in trees.values() for e in entries] + migrate
    total = totals(shown)
    if fmt == "json":
        emit_json({
            "trees": [{"nid": n, "nodes": JsonArray(map(node_text, entries), len(entries))}
                      for n, entries in trees.items()],
            "migrate_nodes": [node_json(e) for e in migrate],
            "totals": total,
            "damage": [d.sentence() for d in damage],
        })
    else:
        draw(trees, migrate, total, all_dups)
        say_damage(app.prog, damage)
    say_changed_while_read(session(app.prog).collection.changed_while_read)
    if nid is None:
        fail_if_walk_found_nothing(app.prog, "pages_shared", walked, bool(damage))
    if not shown and (nid is not None or min_sharers or pid is not None):
        said = [f"in root_stable_tree[{nid}]" if nid is not None else "",
                f"with at least {min_sharers} sharers" if min_sharers else "",
                f"shared by process {pid}" if pid is not None else ""]
        say_nothing_matched(" ".join(["no stable pages"] + [w for w in said if w]))
