"""ksminspect check: every invariant of a healthy KSM, as findings."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import click

from ksminspect.checks.engine import Finding
from ksminspect.errors import EXIT_FINDINGS, EXIT_OK

from .params import COUNT
from .records import document, finding_json
from .render import echo_wrapped, emit_json, emit_table, format_option_with, plural, severity

SEVERITIES = ("error", "warning", "info")


def _complete_checks(incomplete: str) -> list:
    from click.shell_completion import CompletionItem

    from ksminspect.checks import RULES

    done, _, last = incomplete.rpartition(",")
    prefix = done + "," if done else ""
    return [CompletionItem(prefix + r.id, help=r.keeps) for r in RULES if r.id.startswith(last)]


# KTAP (Documentation/dev-tools/ktap.rst): lines of evidence shown per failing check
KTAP_SHOWN = 5

# a hex number in a message: findings alike but for these are one line
_HEX = re.compile(r"0x[0-9a-f]+")


def folds(findings: Iterable[Finding]) -> list[list[Finding]]:
    """The findings in groups alike but for their hex numbers (addresses,
    offsets): same check, severity, pid, rule and message otherwise; in
    order of each group's first finding."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        key = (f.check, f.severity, f.pid, f.rule, f.transient, _HEX.sub("#", f.message))
        groups.setdefault(key, []).append(f)
    return list(groups.values())


def folded_message(group: list[Finding]) -> str:
    """A group's first message, and where it has more: how many, and the
    range of the addresses they are about."""
    first = group[0]
    if len(group) == 1:
        return first.message
    where = sorted(f.address for f in group if f.address is not None)
    span = f": {where[0]:#x} .. {where[-1]:#x}" if where else ""
    return f"{first.message} [{len(group)} alike{span}]"


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many of *findings* are of each severity, the worst first."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        counts[f.severity.value] += 1
    return counts


def failing_levels(strict: bool) -> tuple[str, ...]:
    """The severities that fail a check (and set the exit code)."""
    return ("error", "warning") if strict else ("error",)


def fails(counts: dict[str, int], strict: bool) -> bool:
    """Whether findings of these :func:`severity_counts` fail."""
    return any(counts[s] for s in failing_levels(strict))


def by_check(findings: Iterable[Finding]) -> dict[str, list[Finding]]:
    """The findings of each check, in order of each check's first."""
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def counts_words(counts: dict[str, int]) -> str:
    """"16 errors", "1 warning, 3 info": the non-zero counts by severity."""
    words = [plural(counts.get(s, 0), s) if s != "info" else f"{counts['info']} info"
             for s in SEVERITIES if counts.get(s)]
    return ", ".join(words) or "no finding"


def verdict(report, checks: list[str], strict: bool, live: bool) -> tuple[str, list[str]]:
    """The answer in a line, and the checks that fail, worst first."""
    mine = by_check(report.findings)
    counts = {c: severity_counts(mine.get(c, ())) for c in checks}
    # the certain first (live: none that a race may explain), then the worst
    racy = {f.check for f in report.findings if f.transient}
    failing = sorted((c for c in checks if fails(counts[c], strict)),
                     key=lambda c: (c in racy, -counts[c]["error"], -counts[c]["warning"], c))
    total = severity_counts(report.findings)
    judged = len(checks) - sum(1 for c in checks if c in report.cannot_tell and c not in mine)
    told = f"{total['error']} errors, {total['warning']} warnings, {total['info']} info"
    where = " (live kernel)" if live else ""
    if failing:
        head = f"KSM is not healthy{where}: {len(failing)} of {plural(len(checks), 'check')} fail: {told}"
    elif total["warning"]:
        head = f"KSM has warnings{where}: {told} in {plural(len(checks), 'check')}"
    else:
        head = (f"KSM is healthy{where}: {told} in {plural(len(checks), 'check')}"
                + (f", {len(checks) - judged} of which cannot tell" if judged < len(checks) else ""))
    return head, failing


def certainty(findings: list[Finding], live: bool) -> str:
    """How sure the listed findings of one check are."""
    rules = sorted({f.rule for f in findings if f.rule})
    if not live:
        sure = "certain (the dump)"
    elif any(f.transient for f in findings):
        sure = "likely (read again; a race with KSM still possible)"
    else:
        sure = "certain (read again)"
    return sure + (f"; rule: {', '.join(rules)}" if rules else "")


def ktap_lines(checks: list[str], findings: list, cannot_tell: dict[str, str],
               strict: bool, shown: int = KTAP_SHOWN, head: str = "") -> Iterator[str]:
    """KTAP version 1: a test per check, "not ok" where it has error-level
    findings (with strict, warnings too), "# SKIP" where it could judge
    nothing; the verdict, counts and the first *shown* lines of evidence
    (alike findings folded) as diagnostics."""
    failing = failing_levels(strict)
    yield "KTAP version 1"
    yield f"1..{len(checks)}"
    if head:
        yield f"# {head}"
    totals = {"pass": 0, "fail": 0, "skip": 0}
    of_check = by_check(findings)
    for number, name in enumerate(checks, 1):
        mine = of_check.get(name, [])
        if mine:
            yield f"# {name}: {counts_words(severity_counts(mine))}"
        lines = folds(f for f in mine if f.severity.value in failing)
        for group in lines[:shown]:
            yield f"# {group[0].severity.value}: {folded_message(group)}"
        if len(lines) > shown:
            yield f"# ... and {len(lines) - shown} more lines of evidence"
        if lines:
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


def _table(report, checks: list[str], strict: bool, live: bool, least: str | None,
           limit: int | None, unfold: bool) -> None:
    """The verdict first, then the evidence of each failing check (alike
    findings folded unless *unfold*), the worst first; info only when
    asked for (--severity info, -v), else counted."""
    from ksminspect.checks import CHECKS

    findings = report.findings
    head, failing = verdict(report, checks, strict, live)
    echo_wrapped(head)
    of_check = by_check(findings)
    least = least or ("info" if unfold else "warning")
    shown_levels = SEVERITIES[:SEVERITIES.index(least) + 1]
    counts = {c: severity_counts(mine) for c, mine in of_check.items()}
    listed_checks = sorted((c for c in of_check if any(counts[c][s] for s in shown_levels)),
                           key=lambda c: (c not in failing, failing.index(c) if c in failing else 0,
                                          min(SEVERITIES.index(s) for s in SEVERITIES if counts[c][s]), c))
    if of_check:
        rows = []
        for c in sorted(of_check, key=lambda c: (c not in listed_checks, listed_checks.index(c)
                                                 if c in listed_checks else 0, c)):
            n = counts[c]
            rows.append([c, severity(str(n["error"]), "error") if n["error"] else "0",
                         severity(str(n["warning"]), "warning") if n["warning"] else "0", n["info"],
                         certainty(of_check[c], live) if n["error"] or n["warning"] else
                         "info: worth knowing, not a fault"])
        emit_table(rows, ["check", "errors", "warnings", "info", "how sure"], wrap=["how sure"])
    hidden: dict[str, int] = {}
    for c in listed_checks:
        mine = [f for f in of_check[c] if f.severity.value in shown_levels]
        hidden_here = len(of_check[c]) - len(mine)
        lines = [[f] for f in mine] if unfold else folds(mine)
        click.echo()
        echo_wrapped(f"{c}: {counts_words(counts[c])}"
                     f"; a healthy KSM keeps: {CHECKS[c]}")
        shown = lines if limit is None else lines[:limit]
        rules = {f.rule for g in shown for f in g}
        with_rule = len(rules) > 1
        emit_table([[severity(g[0].severity.value), g[0].pid if g[0].pid is not None else "-"]
                    + ([g[0].rule or ""] if with_rule else []) + [folded_message(g)] for g in shown],
                   ["severity", "pid"] + (["rule"] if with_rule else []) + ["message"],
                   wrap=["message", "rule"])
        if len(lines) > len(shown):
            left = sum(len(g) for g in lines[len(shown):])
            click.echo(f"... and {plural(len(lines) - len(shown), 'line')} ({plural(left, 'finding')}) "
                       f"more, not listed (--limit)")
        if hidden_here:
            hidden[c] = hidden_here
    for c in of_check:
        if c not in listed_checks:
            hidden[c] = len(of_check[c])
    if hidden:
        click.echo()
        echo_wrapped(f"not listed: {plural(sum(hidden.values()), 'finding')} below --severity {least} "
                     f"({', '.join(f'{c} {n}' for c, n in hidden.items())}); -v lists every finding")
    if report.cannot_tell:
        click.echo()
    for name, why in report.cannot_tell.items():
        echo_wrapped(f"cannot tell ({name}): {why}")
    moved = report.stats.get("changed_while_read")
    if moved:
        click.echo(f"{plural(moved, 'finding')} not listed: what {'they name' if moved != 1 else 'it names'} "
                   f"changed while it was read (live kernel)")


@click.command("check")
@click.option("--strict", is_flag=True, help="Warnings count as errors for the exit code.")
@click.option("--only", metavar="CHECK[,CHECK...]", shell_complete=lambda ctx, param, incomplete:
              _complete_checks(incomplete),
              help="Run only these checks (and only the walks they need).")
@click.option("--retries", type=click.IntRange(min=1), default=3, show_default=True,
              help="Live kernel: walks taken before walk damage is believed.")
@click.option("--severity", "least", type=click.Choice(SEVERITIES),
              help="List only findings of this severity or worse (default: the table lists errors and "
                   "warnings, JSON every finding; counts and the exit code take every finding).")
@click.option("--limit", type=COUNT, metavar="N",
              help="List at most N lines of each check (table and KTAP; JSON: N findings), and how many more.")
@click.option("-v", "--all", "unfold", is_flag=True,
              help="Table: every finding on its own line, info included (by default findings alike "
                   "but for their addresses are one line).")
@format_option_with("ktap")
@click.pass_obj
def check(app, strict: bool, only: str | None, retries: int, least: str | None, limit: int | None,
          unfold: bool, fmt: str) -> None:
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
      ksminspect -c vmcore.xz -s vmlinux.debug.xz check --limit 5
      ksminspect -c vmcore.xz -s vmlinux.debug.xz check -v     # every finding
      sudo ksminspect check --strict --format json
      sudo ksminspect check --format ktap     # after tools/testing/selftests/mm
    """
    from ksminspect.checks import CHECKS, run_checks

    prog = app.prog
    chosen = None
    if only is not None:
        chosen = list(dict.fromkeys(c.strip() for c in only.split(",") if c.strip()))
        if not chosen:
            raise click.BadParameter(f"{only!r} names no check; known: {', '.join(CHECKS)}",
                                     param_hint="--only")
        unknown = [c for c in chosen if c not in CHECKS]
        if unknown:
            raise click.BadParameter(f"unknown check{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                     f"known: {', '.join(CHECKS)}", param_hint="--only")
    report = run_checks(prog, app.live, chosen, retries)
    checks = chosen or list(CHECKS)
    findings, cannot_tell = report.findings, report.cannot_tell
    counts = severity_counts(findings)

    if fmt == "json":
        listed, more = _listed(findings, least or "info", limit)
        emit_json(document("check", {
            "findings": [finding_json(f) for f in listed], "counts": counts, "not_listed": more,
            "checks": checks, "stats": report.stats, "live": app.live,
            "cannot_tell": cannot_tell}))
    elif fmt == "ktap":
        for line in ktap_lines(checks, findings, cannot_tell, strict,
                               KTAP_SHOWN if limit is None else limit,
                               verdict(report, checks, strict, app.live)[0]):
            click.echo(line)
    else:
        _table(report, checks, strict, app.live, least, limit, unfold)
    click.get_current_context().exit(EXIT_FINDINGS if fails(counts, strict) else EXIT_OK)
