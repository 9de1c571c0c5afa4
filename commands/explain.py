"""ksminspect explain: where each process's memory stands with KSM, and why
the rest is not merged."""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

import click

from ksminspect.errors import CannotTell

from .params import PID, require_process, say_not_scanned, say_nothing_matched
from .records import hexaddr
from .render import echo_wrapped, emit, emit_table, format_option, progress


def _shares(counts: dict[str, int], whole: int) -> dict[str, Any]:
    return {k: {"pages": n, "share": round(n / whole, 4) if whole else 0.0} for k, n in counts.items()}


def process_json(p, said: list[str], item_size: int, by_vma: bool) -> dict[str, Any]:
    from ksminspect.explain import STATES

    whole = p.total
    out = {
        "pid": p.pid, "comm": p.comm, "mm": hexaddr(p.mm), "cgroup": p.cgroup,
        "pages": _shares({s: p.pages[s] for s in STATES} | {"not_mergeable": p.not_mergeable}, whole),
        "total": whole,
        "hugetlb_pages": p.hugetlb,
        "merged_in_chain": p.in_chain, "merged_written": p.written,
        "never_scanned_ahead": p.ahead,
        "unstable_ages": {str(age): n for age, n in sorted(p.ages.items())},
        "not_mergeable": [{"why": why, "vmas": n, "bytes": size, "pages": pages}
                          for why, (n, size, pages) in _untouchable(p).items()],
        "rmap_items_without_page": dict(p.items_without_page),
        "ksm_stat": p.ksm_stat,
        "metadata_bytes": p.rmap_items * item_size,
        "advice": said,
        "cannot_tell": p.cannot_tell,
    }
    if by_vma:
        out["vmas"] = [{"start": hexaddr(v.start), "end": hexaddr(v.end), "name": v.name,
                        "flags": hexaddr(v.flags), "mergeable": v.mergeable, "why_not": v.why_not,
                        "resident": v.resident, "hugetlb": v.hugetlb,
                        "pages": {s: v.pages[s] for s in STATES}}
                       for v in p.vmas]
    return out


def _untouchable(p) -> dict[str, tuple[int, int, int]]:
    """The VMAs KSM will not touch, by why: (VMAs, bytes, resident pages)."""
    out: dict[str, tuple[int, int, int]] = {}
    for v in p.vmas:
        if not v.mergeable:
            n, size, pages = out.get(v.why_not, (0, 0, 0))
            out[v.why_not] = (n + 1, size + v.end - v.start, pages + v.resident + v.hugetlb)
    return out


def cgroup_totals(processes) -> dict[str, Counter]:
    from ksminspect.explain import STATES

    out: dict[str, Counter] = {}
    for p in processes:
        total = out.setdefault(p.cgroup or "?", Counter())
        total.update({s: p.pages[s] for s in STATES})
        total["not_mergeable"] += p.not_mergeable
        total["processes"] += 1
    return out


@click.command("explain")
@click.option("--pid", type=PID, help="Only process PID.")
@click.option("--cgroup", metavar="PATH", callback=lambda ctx, param, value: _cgroup_path(value),
              help="Only processes in this memory cgroup (and below it), e.g. /vm-a.")
@click.option("--by", type=click.Choice(["process", "vma", "cgroup"]), default="process",
              show_default=True, help="One row per process, per VMA of each process, or per memory cgroup.")
@format_option
@click.pass_obj
def explain_command(app, pid: Optional[int], cgroup: Optional[str], by: str, fmt: str) -> None:
    """Where each process's memory stands with KSM, and why the rest is not merged.

    For each process on ksm_mm_head: its resident anonymous pages in
    mergeable VMAs by state (merged, merged with the zero page, unstable,
    volatile, skipped by the smart scan, never scanned), the pages in VMAs
    KSM will not touch and why, the kernel's own counters, and a line of
    advice where the numbers support one.

    \b
    Examples:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz explain
      sudo ksminspect explain --pid 4242 --by vma
      sudo ksminspect explain --by cgroup --format json
    """
    from ksminspect.counters import read_tunables
    from ksminspect.explain import STATES, advice, explain, metadata, scan_pace
    from ksminspect.layout import get_layout

    prog = app.prog
    require_process(prog, pid)
    scanned = list(progress(explain(prog, pid), "processes"))
    processes = [p for p in scanned if cgroup is None or _within(p.cgroup, cgroup)]
    if processes and all(p.cannot_tell for p in processes):  # nothing to show: one sentence, exit 2
        raise CannotTell(processes[0].cannot_tell)
    pace = scan_pace(prog, processes)
    tunables = read_tunables(prog)
    said = [advice(p, pace, tunables.get("max_page_sharing")) for p in processes]
    has_memcg = any(p.cgroup is not None for p in processes)
    groups = cgroup_totals(processes) if by == "cgroup" else {}
    data = {
        "processes": [process_json(p, lines, get_layout(prog).rmap_item.size, by == "vma")
                      for p, lines in zip(processes, said)],
        "cgroups": [{"cgroup": name, "processes": t["processes"],
                     "pages": {k: n for k, n in t.items() if k != "processes"}}
                    for name, t in groups.items()] if by == "cgroup" else None,
        "metadata": metadata(prog),
        "scan": {"run": pace.run, "pages_to_scan": pace.pages_to_scan,
                 "sleep_millisecs": pace.sleep_millisecs, "full_scan_pages": pace.pages,
                 "full_scan_seconds": pace.seconds},
    }

    def table() -> None:
        headers = ["pid", "comm"] + [s.replace("_", " ") for s in STATES] + ["not mergeable"]
        if by == "cgroup":
            if not has_memcg:
                click.echo("this kernel has no memory cgroups (CONFIG_MEMCG): one row for all", err=True)
            emit_table([[name, t["processes"]] + [t[s] for s in STATES] + [t["not_mergeable"]]
                        for name, t in groups.items()],
                       ["cgroup", "processes"] + headers[2:], wrap=["cgroup"])
            return
        for p, lines in zip(processes, said):
            whole = p.total
            cells = [_cell(p.pages[s], whole) for s in STATES] + [_cell(p.not_mergeable, whole)]
            echo_wrapped(f"pid {p.pid} {p.comm or '?'}" + (f"  cgroup {p.cgroup}" if p.cgroup else "")
                         + f"  {whole} pages")
            if p.cannot_tell:
                click.echo("  cannot tell (stderr says why)")
                click.echo()
                continue
            if by == "vma":
                emit_table([[f"{v.start:#x}", f"{v.end:#x}", v.name or "-", _vma_pages(v)]
                            for v in p.vmas], ["start", "end", "name", "pages"],
                           wrap=["pages"], shrink=["name"])
            else:
                emit_table([cells], headers[2:])
            for line in lines:
                echo_wrapped(f"  - {line}")
            click.echo()
        m = data["metadata"]
        echo_wrapped(f"metadata: {m['rmap_items']} rmap_items ({m['rmap_item_bytes'] / 1024:.0f} KB), "
                     f"{m['stable_nodes']} stable nodes ({m['stable_node_bytes'] / 1024:.0f} KB)")
        if pace.seconds is not None:
            echo_wrapped(f"scan: about {pace.pages} pages a full scan, pages_to_scan "
                         f"{pace.pages_to_scan}, sleep_millisecs {pace.sleep_millisecs}"
                         + ("" if pace.run != 0 else "; ksmd is stopped (run=0)"))

    emit(fmt, "explain", data, table)
    why: dict[str, list] = {}
    for p in processes:
        if p.cannot_tell:
            why.setdefault(p.cannot_tell, []).append(f"pid {p.pid}" if p.pid is not None else f"mm {p.mm:#x}")
    for sentence, who in why.items():
        click.echo(f"ksminspect: cannot tell for {', '.join(who)}: {sentence}", err=True)
    if not processes and pid is not None and scanned:  # the pid is scanned: the cgroup left it out
        say_nothing_matched(f"process {pid} is in cgroup {scanned[0].cgroup or '(unknown)'}, not in {cgroup} "
                            f"or below it")
    elif not processes and pid is not None:
        say_not_scanned(f"process {pid}")
    elif not processes and cgroup is not None:
        say_nothing_matched(f"no process of ksm_mm_head in cgroup {cgroup}")


def _cgroup_path(value: Optional[str]) -> Optional[str]:
    """--cgroup as the kernel names cgroups: a path from the root, /."""
    if value is not None and not value.startswith("/"):
        raise click.BadParameter(f"{value!r} is not a cgroup path: cgroup paths begin with / "
                                 f"(e.g. /{value.strip('/') or 'system.slice'})", param_hint="--cgroup")
    return value


def _within(path: Optional[str], cgroup: str) -> bool:
    """*path* is the cgroup *cgroup* or one below it."""
    top = cgroup.rstrip("/")
    return path is not None and (not top or path == top or path.startswith(top + "/"))


def _vma_pages(v) -> str:
    """A VMA's pages in words: its states, or why KSM will not touch it."""
    from ksminspect.explain import STATES

    if not v.mergeable:
        held = f"{v.hugetlb} pages in huge pages" if v.hugetlb else f"{v.resident} resident"
        return f"KSM will not touch it ({v.why_not}): {held}"
    said = ", ".join(f"{s.replace('_', ' ')} {v.pages[s]}" for s in STATES if v.pages[s])
    return said or "none resident"


def _cell(n: int, whole: int) -> str:
    return f"{n} ({n / whole:.0%})" if whole and n else str(n)
