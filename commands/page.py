"""ksminspect page: from a page frame or a process address to KSM."""

from __future__ import annotations

from typing import Optional

import click

from .params import HEX, PID
from .records import fields_text, hexaddr, item_json, node_json
from .render import echo_wrapped, emit, format_option
from .stable_tree import draw, totals


@click.command("page")
@click.argument("target", type=HEX)
@click.option("--pid", type=PID, help="TARGET is a virtual address in process PID, not a PFN.")
@format_option
@click.pass_obj
def page(app, target: int, pid: Optional[int], fmt: str) -> None:
    """Is a page KSM? Its stable node, chain and sharers, or its rmap_items.

    TARGET, in hex with or without 0x: a page frame number or a struct page
    address, or with --pid a virtual address in that process. For a page
    that is not KSM, says so and shows any rmap_item that covers it.

    \b
    Examples:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz page 33e5
      ksminspect -c vmcore.xz -s vmlinux.debug.xz page 0xffffea0000cf9400
      ksminspect -c vmcore.xz -s vmlinux.debug.xz page --pid 42 0x7f7540366000
    """
    from ksminspect.layout import get_layout
    from ksminspect.mm import mm_owner
    from ksminspect.page import inspect_address, inspect_pfn, page_frame
    from ksminspect.program import dump_description

    prog = app.prog
    has_offset = get_layout(prog).rmap_item.offset is not None
    r = (inspect_address(prog, pid, target) if pid is not None
         else inspect_pfn(prog, page_frame(prog, target)))
    data = {
        "pfn": hexaddr(r.pfn) if r.pfn >= 0 else None,
        "page": hexaddr(r.page) if r.page else None,
        "mapping": hexaddr(r.mapping) if r.page else None,
        "pid": r.pid,
        "page_address": hexaddr(r.address),
        "ksm": r.is_ksm,
        "in_dump": r.in_dump,
        "stable_node": hexaddr(r.stable_node),
        "node": node_json(r.entry) if r.entry else None,
        "chain": hexaddr(r.chain.node) if r.chain else None,
        "items": [item_json(i, mm_owner(prog, i.mm), has_offset) for i in r.items],
        "rmap_walk": {hexaddr(item): {"reaches": reach.reached, "why": reach.why}
                      for item, reach in r.reach.items()} if r.is_ksm else None,
    }

    def table() -> None:
        where = f"pid {r.pid} address {r.address:#x}" if r.pid is not None else ""
        if r.pfn < 0:
            echo_wrapped(f"{where}: not mapped to a page")
        elif r.is_ksm:
            echo_wrapped(f"{where + ': ' if where else ''}pfn {r.pfn:#x} is a KSM page; "
                       f"page->mapping points at stable node {r.stable_node:#x}")
            if r.entry is None:
                click.echo("that stable node is in no stable tree and not on migrate_nodes")
            else:
                if r.chain is not None:
                    echo_wrapped(f"it is a dup of chain {r.chain.node:#x} "
                               f"({len(r.chain.dups)} dups)")
                draw({r.entry.tree_nid if r.entry.tree_nid is not None else 0: [r.entry]}, [],
                     totals([r.entry]))
                for item, reach in r.reach.items():
                    said = {True: "yes", False: "no", None: "cannot tell"}[reach.reached]
                    echo_wrapped(f"rmap_item {item:#x}: rmap_walk_ksm reaches it: {said} ({reach.why})")
        else:
            echo_wrapped(f"{where + ': ' if where else ''}pfn {r.pfn:#x} is not a KSM page "
                       f"(page->mapping {r.mapping:#x})")
        if r.in_dump is False:
            dump = dump_description(prog)
            why = (f": dump level {dump['dump_level']} left out {', '.join(dump['left_out'])}"
                   if dump["left_out"] else "")
            echo_wrapped(f"the page's own memory is not in the dump{why}; its struct page and "
                       f"KSM's objects are in it")
        for i in r.items:
            echo_wrapped(f"rmap_item {i.address:#x} covers it: {i.state.value} "
                       f"{fields_text(i.meaningful(has_offset))}")
        if not r.items and not r.is_ksm:
            click.echo("no rmap_item covers it")

    emit(fmt, "page", data, table)
