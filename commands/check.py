"""ksminspect check: every invariant of a healthy KSM, as findings."""

from __future__ import annotations

from typing import Iterator

import click

from ksminspect.errors import EXIT_FINDINGS, EXIT_OK

from .params import COUNT
from .records import document, finding_json
from .render import echo_wrapped, emit_json, emit_table, format_option_with, severity

SEVERITIES = ("error", "warning", "info")


def _complete_checks(incomplete: str) -> list:
    from click.shell_completion import CompletionItem

    from ksminspect.checks import RULES

    done, _, last = incomplete.rpartition(",")
    prefix = done + "," if done else ""
    return [CompletionItem(prefix + r.id, help=r.keeps) for r in RULES if r.id.startswith(last)]


# KTAP (Documentation/dev-tools/ktap.rst): diagnostics shown per failing check.
KTAP_SHOWN = 5


def ktap_lines(checks: list[str], findings: list, cannot_tell: dict[str, str],
               strict: bool) -> Iterator[str]:
    """KTAP version 1: a test per check, "not ok" where it has error-level
    findings (with strict, warnings too), "# SKIP" where it could judge
    nothing; counts and the first findings as diagnostics."""
    from ksminspect.checks import Severity

    failing = {Severity.ERROR} | ({Severity.WARNING} if strict else set())
    yield "KTAP version 1"
    yield f"1..{len(checks)}"
    totals = {"pass": 0, "fail": 0, "skip": 0}
    for number, name in enumerate(checks, 1):
        mine = [f for f in findings if f.check == name]
        counts = {s: sum(f.severity == s for f in mine) for s in Severity}
        if mine:
            yield (f"# {name}: {counts[Severity.ERROR]} errors, {counts[Severity.WARNING]} "
                   f"warnings, {counts[Severity.INFO]} info")
        bad = [f for f in mine if f.severity in failing]
        for f in bad[:KTAP_SHOWN]:
            yield f"# {f.severity.value}: {f.message}"
        if len(bad) > KTAP_SHOWN:
            yield f"# ... and {len(bad) - KTAP_SHOWN} more"
        if bad:
            totals["fail"] += 1
            yield f"not ok {number} {name}"
        elif name in cannot_tell and not mine:
            totals["skip"] += 1
            yield f"ok {number} {name} # SKIP cannot tell: {cannot_tell[name]}"
        else:
            if name in cannot_tell:
                yield f"# cannot tell for some objects: {cannot_tell[name]}"
            totals["pass"] += 1
            yield f"ok {number} {name}"
    yield (f"# Totals: pass:{totals['pass']} fail:{totals['fail']} xfail:0 xpass:0 "
           f"skip:{totals['skip']} error:0")


def _listed(findings: list, least: str, limit: int | None) -> tuple[list, dict[str, int]]:
    """The findings of severity *least* or worse, at most *limit* of each
    check; and per check, how many are not listed."""
    worst = SEVERITIES[:SEVERITIES.index(least) + 1]
    listed, more, seen = [], {}, {}
    for f in findings:
        if f.severity.value in worst and (limit is None or seen.get(f.check, 0) < limit):
            listed.append(f)
            seen[f.check] = seen.get(f.check, 0) + 1
        else:
            more[f.check] = more.get(f.check, 0) + 1
    return listed, more


@click.command("check")
@click.option("--strict", is_flag=True, help="Warnings count as errors for the exit code.")
@click.option("--only", metavar="CHECK[,CHECK...]", shell_complete=lambda ctx, param, incomplete:
              _complete_checks(incomplete),
              help="Run only these checks (and only the walks they need).")
@click.option("--retries", type=click.IntRange(min=1), default=3, show_default=True,
              help="Live kernel: walks taken before walk damage is believed.")
@click.option("--severity", "least", type=click.Choice(SEVERITIES), default="info", show_default=True,
              help="List only findings of this severity or worse (counts and the exit code still "
                   "take every finding).")
@click.option("--limit", type=COUNT, metavar="N",
              help="List at most N findings of each check (table and JSON), and how many more.")
@format_option_with("ktap")
@click.pass_obj
def check(app, strict: bool, only: str | None, retries: int, least: str, limit: int | None,
          fmt: str) -> None:
    """Check every invariant of a healthy KSM; find stale offsets and anon_vmas.

    Exit code: 0 no error-level finding, 1 error-level findings (with
    --strict, warnings too), 2 the kernel cannot be inspected. --format ktap
    writes KTAP, the kernel selftests' format: one test per check. On a live
    kernel (KSM moves while it is read) each finding is confirmed by reading
    again what it names; what changed meanwhile is counted, not listed, and
    what stays keeps its severity (transient where it rests on whole walks).
    In a dump, a finding resting on memory the dump lacks is "cannot tell".

    \b
    Examples:
      ksminspect -c vmcore.xz -s vmlinux.debug.xz check --severity warning --limit 5
      sudo ksminspect check --strict --format json
      sudo ksminspect check --format ktap     # after tools/testing/selftests/mm
    """
    from ksminspect.checks import CHECKS, Severity, run_checks

    prog = app.prog
    if only:
        unknown = set(only.split(",")) - set(CHECKS)
        if unknown:
            raise click.BadParameter(f"unknown check {', '.join(sorted(unknown))}; "
                                     f"known: {', '.join(CHECKS)}", param_hint="--only")
    chosen = only.split(",") if only else None
    report = run_checks(prog, app.live, chosen, retries)
    findings, cannot_tell = report.findings, report.cannot_tell
    counts = {s.value: sum(1 for f in findings if f.severity == s) for s in Severity}
    failing = counts["error"] + (counts["warning"] if strict else 0)
    listed, more = _listed(findings, least, limit)

    if fmt == "json":
        emit_json(document("check", {
            "findings": [finding_json(f) for f in listed], "counts": counts, "not_listed": more,
            "checks": chosen or list(CHECKS), "stats": report.stats, "live": app.live,
            "cannot_tell": cannot_tell}))
    elif fmt == "ktap":
        for line in ktap_lines(chosen or list(CHECKS), findings, cannot_tell, strict):
            click.echo(line)
    else:
        by_check: dict[str, list] = {}
        for f in listed:
            by_check.setdefault(f.check, []).append(f)
        order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
        for name in sorted(by_check, key=lambda c: (min(order[f.severity] for f in by_check[c]), c)):
            group = by_check[name]
            total = len(group) + more.get(name, 0)
            rules = {f.rule for f in group}
            one_rule = f" [{next(iter(rules))}]" if len(rules) == 1 and None not in rules else ""
            echo_wrapped(f"{name}{one_rule}: {total} finding{'s' if total != 1 else ''} "
                         f"({CHECKS[name]})")
            # the message names the object and its page; the pid is the one fact it leaves out
            emit_table([[severity(f.severity.value), f.pid if f.pid is not None else "-"]
                        + ([f.rule or ""] if not one_rule and len(rules) > 1 else []) + [f.message]
                        for f in group],
                       ["severity", "pid"] + (["rule"] if not one_rule and len(rules) > 1 else [])
                       + ["message"], wrap=["message", "rule"])
            if more.get(name):
                click.echo(f"... and {more[name]} more, not listed")
            click.echo()
        for name, why in cannot_tell.items():
            echo_wrapped(f"cannot tell ({name}): {why}")
        moved = report.stats.get("changed_while_read")
        if moved:
            click.echo(f"{moved} finding{'s' if moved != 1 else ''} not listed: what "
                       f"{'they name' if moved != 1 else 'it names'} changed while it was read "
                       f"(live kernel)")
        hidden = sum(more.values())
        click.echo(f"{counts['error']} errors, {counts['warning']} warnings, "
                   f"{counts['info']} info; {len(chosen or CHECKS)} checks"
                   + (" (live kernel)" if app.live else "")
                   + (f"; {hidden} not listed (--severity, --limit)" if hidden else ""))
    click.get_current_context().exit(EXIT_FINDINGS if failing else EXIT_OK)
