"""ksminspect stable-tree: the stable trees drawn as chain -> dups -> sharers."""

from __future__ import annotations

from typing import Optional

import click

from .params import (COUNT, NID, PID, limit_option, require_process, require_tree, say_limited,
                     say_nothing_matched)
from .records import damage_json, document, node_json, node_text
from .render import (JsonArray, echo_parts, echo_wrapped, emit_json, fail_if_walk_found_nothing, format_option,
                     plural, progress, say_changed_while_read, say_damage, severity)


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
    from ksminspect.decode import NodeKind

    pages = sharers = chains = dups = nodes = 0
    for e in entries:
        if e.kind is NodeKind.CHAIN:
            chains += 1
            dups += len(e.dups)
            held = [d for d in e.dups if d.sharers]
        else:  # a plain node, or a dup drawn alone (page on a dup)
            dups += e.kind is NodeKind.DUP
            nodes += e.kind is not NodeKind.DUP
            held = [e] if e.sharers else []
        pages += len(held)
        sharers += sum(len(h.sharers) for h in held)
    return {"nodes": nodes, "chains": chains, "dups": dups, "pages_shared": pages,
            "pages_sharing": sharers - pages}


def _draw_sharers(e, prefix: str) -> None:
    for i, s in enumerate(e.sharers):
        last = i == len(e.sharers) - 1
        who = f"pid {s.pid} {s.comm}" if s.pid is not None else f"mm {s.mm:#x}"
        state = [] if s.state == "stable" else [severity(f"[{s.state}!]", "error")]
        echo_parts(f"{prefix}{'└── ' if last else '├── '}", prefix + ("        " if last else "│       "),
                   [who, f"{s.page_address:#x}", f"item {s.item:#x}"] + state)


def _describe(e, all_dups: dict[int, int]) -> list[str]:
    """An entry's line, in parts that may be folded."""
    if e.kind.value == "chain":  # a chain's own nid is never set
        total = all_dups.get(e.node, len(e.dups))
        return [f"chain {e.node:#x}", f"dups {len(e.dups)}" + (f" of {total}" if total != len(e.dups) else "")]
    return ([f"{e.kind.value} {e.node:#x}", f"kpfn {e.kpfn:#x}", f"sharers {len(e.sharers)}"
             + (f" nid {e.nid}" if e.nid is not None else "")]
            + ([] if e.rmap_hlist_len == len(e.sharers)
               else [severity(f"rmap_hlist_len {e.rmap_hlist_len}!", "error")]))


def _count(held: Optional[int], shown: int) -> str:
    """"41 entries", or "41 entries, 2 shown" under --limit."""
    held = shown if held is None else held
    return plural(held, "entry", "entries") + (f", {shown} shown" if shown != held else "")


def draw(trees: dict, migrate: list, total: dict[str, int],
         all_dups: Optional[dict[int, int]] = None, counts: Optional[dict] = None) -> None:
    """*counts*: each tree's entries (None: migrate_nodes') before --limit."""
    all_dups, counts = all_dups or {}, counts or {}
    for nid, entries in trees.items():
        click.echo(f"root_stable_tree[{nid}]: {_count(counts.get(nid), len(entries))}")
        for i, e in enumerate(entries):
            last = i == len(entries) - 1
            inner = "    " if last else "│   "
            echo_parts("└── " if last else "├── ", inner + "    ", _describe(e, all_dups))
            for j, d in enumerate(e.dups):
                dlast = j == len(e.dups) - 1
                echo_parts(f"{inner}{'└── ' if dlast else '├── '}",
                           inner + ("        " if dlast else "│       "), _describe(d, all_dups))
                _draw_sharers(d, inner + ("    " if dlast else "│   "))
            _draw_sharers(e, inner)
    click.echo(f"migrate_nodes: {_count(counts.get(None), len(migrate))}")
    for e in migrate:
        echo_parts("└── ", "        ", _describe(e, all_dups))
        _draw_sharers(e, "    ")
    echo_wrapped(", ".join(f"{k} {v}" for k, v in total.items()))


@click.command("stable-tree")
@click.option("--nid", type=NID, help="Only root_stable_tree[NID].")
@click.option("--min-sharers", type=COUNT, default=0, help="Only pages with at least N sharers.")
@click.option("--pid", type=PID, help="Only pages that process PID shares.")
@click.option("--sort", type=click.Choice(["sharers"]),
              help="Most shared first (a chain: its dups' sharers); without it, tree order.")
@limit_option("entries of each tree and of migrate_nodes")
@format_option
@click.pass_obj
def stable_tree(app, nid: Optional[int], min_sharers: int, pid: Optional[int], sort: Optional[str],
                limit: Optional[int], fmt: str) -> None:
    """The stable trees: chain -> dups -> sharers, and migrate_nodes.

    Each entry shows its kpfn and sharers (pid, comm, page address); a chain
    shows its dups. Totals count KSM pages (pages_shared) and further sharers
    (pages_sharing) as the kernel does, over what is shown.

    \b
    Example:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz stable-tree --min-sharers 3
      ksminspect -c vmcore.xz -s vmlinux.debug.xz stable-tree --sort sharers --limit 10
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
    matched = sum(map(len, trees.values())) + len(migrate)
    # what the filters matched, whatever --limit shows of it
    total = totals([e for entries in trees.values() for e in entries] + migrate)
    counts = {n: len(entries) for n, entries in trees.items()} | {None: len(migrate)}
    for entries in list(trees.values()) + [migrate]:
        if sort:
            entries.sort(key=lambda e: -sum(len(d.sharers) for d in (e.dups or [e])))
        del entries[limit if limit is not None else len(entries):]
    shown = [e for entries in trees.values() for e in entries] + migrate
    if fmt == "json":
        emit_json(document("stable-tree", {
            "trees": [{"nid": n, "nodes": JsonArray(map(node_text, entries), len(entries))}
                      for n, entries in trees.items()],
            "migrate_nodes": [node_json(e) for e in migrate],
            "totals": total,
            "damage": damage_json(damage),
        }))
    else:
        draw(trees, migrate, total, all_dups, counts)
        say_damage(app.prog, damage)
    say_limited(len(shown), matched, "stable tree entries")
    say_changed_while_read(session(app.prog).collection.changed_while_read)
    if nid is None:
        fail_if_walk_found_nothing(app.prog, "pages_shared", walked, bool(damage))
    if not shown and (nid is not None or min_sharers or pid is not None):
        said = [f"in root_stable_tree[{nid}]" if nid is not None else "",
                f"with at least {min_sharers} sharers" if min_sharers else "",
                f"shared by process {pid}" if pid is not None else ""]
        say_nothing_matched(" ".join(["no stable pages"] + [w for w in said if w]))
