"""ksminspect metrics: the text parses with Prometheus' own parser on every
dump, holds the dump's own counters, and a real node_exporter serves it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import DUMPS, Dump, program_of, run_cli

from ksminspect.layout import get_layout

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
PROMTOOL = shutil.which("promtool")  # Debian's prometheus package


def needs(tool: str | None, package: str) -> str:
    """*tool*'s path; the test is skipped without it, or fails where CI
    (KSMINSPECT_REQUIRE_DUMPS) installs it."""
    if tool is None:
        if os.environ.get("KSMINSPECT_REQUIRE_DUMPS"):
            pytest.fail(f"{package} is not installed (.ci/run installs it)")
        pytest.skip(f"{package} is not installed")
    return tool


def promtool_lint(text: str) -> str:
    """promtool check metrics: Prometheus' own lint of names, units, HELP and TYPE."""
    r = subprocess.run([needs(PROMTOOL, "prometheus (promtool)"), "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip() if r.returncode or r.stdout or r.stderr else ""


def families(text: str) -> dict:
    """name -> family, as Prometheus' client library parses the text (a
    counter's family is named without its _total)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict, name: str) -> list:
    return [s for f in fams.values() for s in f.samples if s.name == name]


def by(fams: dict, name: str, *keys: str) -> dict:
    return {tuple(s.labels[k] for k in keys): s.value for s in samples(fams, name)}


def test_metrics_parse_and_hold_the_dumps_own_counters(dump: Dump) -> None:
    result = run_cli(*dump.args, "metrics")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    fams = families(text)
    # HELP and TYPE for each, names in base units and Prometheus' conventions
    for line in text.splitlines():
        if not line.startswith("#"):
            name = re.match(r"[a-z_]+", line)[0]
            assert f"# TYPE {name} " in text, name
    for f in fams.values():
        assert f.documentation and f.type in ("gauge", "counter"), f.name
        assert f.name.startswith("ksminspect_") and not re.search(r"_(kb|mb|ms|pct|percent)$", f.name)
    assert promtool_lint(text) == ""
    sysfs = dump.sysfs
    assert samples(fams, "ksminspect_ksm_full_scans_total")[0].value == int(sysfs["full_scans"])
    if "general_profit" in sysfs:
        assert samples(fams, "ksminspect_ksm_general_profit_bytes")[0].value == int(sysfs["general_profit"])
    # per process: the kernel's own counters as the guest read them before the dump
    merging = by(fams, "ksminspect_process_ksm_merging_pages", "pid")
    items = by(fams, "ksminspect_process_rmap_items", "pid")
    profit = {pid: v for (pid, source), v in
              by(fams, "ksminspect_process_ksm_profit_bytes", "pid", "source").items() if source == "kernel"}
    compared = 0
    for p in dump.processes:
        stat, pid = p.get("ksm_stat") or {}, (str(p["pid"]),)
        if p.get("exited") or pid not in items:
            continue
        truth = {"merging": p.get("ksm_merging_pages", stat.get("ksm_merging_pages")),
                 "items": stat.get("ksm_rmap_items"), "profit": stat.get("ksm_process_profit")}
        got = {"merging": merging.get(pid), "items": items.get(pid), "profit": profit.get(pid[0])}
        for key, want in truth.items():
            if want is not None and int(want) >= 0:  # -1: this kernel does not count it
                assert got[key] == int(want), (p, key, got)
                compared += 1
    assert compared >= sum(1 for p in dump.processes if p.get("ksm_stat") and not p.get("exited"))
    # per check: what check -f json counts
    check = json.loads(run_cli(*dump.args, "check", "-f", "json").stdout)
    findings = by(fams, "ksminspect_check_findings", "check", "severity")
    assert set(findings) == {(c, s) for c in check["checks"] for s in ("error", "warning", "info")}
    for (c, s), n in findings.items():
        assert n == sum(1 for f in check["findings"] if f["check"] == c and f["severity"] == s), (c, s)
    told = by(fams, "ksminspect_check_cannot_tell", "check")
    assert {c for (c,), v in told.items() if v} == set(check["cannot_tell"])
    # explain's merged memory, where the page tables could be read, is the kernel's merging pages
    memory = by(fams, "ksminspect_process_memory_bytes", "pid", "state")
    explained = json.loads(run_cli(*dump.args, "explain", "-f", "json").stdout) if memory else None
    page_size = get_layout(program_of(dump)).page_size
    for p in (explained or {}).get("processes", []):
        if p["cannot_tell"] is None:
            assert memory[(str(p["pid"]), "merged")] == p["pages"]["merged"]["pages"] * page_size


def test_processes_beyond_the_limit_are_one_series() -> None:
    dump = next(d for d in DUMPS if d.name == "6.12-explain")
    whole = families(run_cli(*dump.args, "metrics").stdout)
    cut = families(run_cli(*dump.args, "metrics", "--max-processes", "2").stdout)
    pids = {s.labels["pid"] for s in samples(cut, "ksminspect_process_rmap_items")}
    assert len(pids) == 3 and "" in pids
    assert (sum(s.value for s in samples(cut, "ksminspect_process_rmap_items"))
            == sum(s.value for s in samples(whole, "ksminspect_process_rmap_items")))
    others = [s for s in samples(cut, "ksminspect_process_rmap_items") if s.labels["pid"] == ""]
    assert others[0].labels["comm"] == "(others)"


def test_a_file_is_written_atomically_and_json_follows_the_schema(tmp_path) -> None:
    from ksminspect.commands.records import schema
    import jsonschema

    dump = next(d for d in DUMPS if d.name == "7.2-seed-noreset")
    out = tmp_path / "ksminspect.prom"
    out.write_text("old\n")
    result = run_cli(*dump.args, "metrics", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert os.listdir(tmp_path) == ["ksminspect.prom"]  # no temporary left behind
    fams = families(out.read_text())
    errors = by(fams, "ksminspect_check_findings", "check", "severity")
    assert errors[("stale-offset", "error")] == 16 and errors[("overlay-garbage", "error")] == 40
    doc = json.loads(run_cli(*dump.args, "metrics", "-f", "json").stdout)
    jsonschema.validate(doc, schema())
    assert {f["name"] for f in doc["families"]} >= {"ksminspect_check_findings", "ksminspect_process_memory_bytes"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_with_node_exporter(directory: Path) -> str:
    """Debian's prometheus-node-exporter reading *directory* with its
    textfile collector alone, on 127.0.0.1; /metrics as it serves it."""
    port = _free_port()
    proc = subprocess.Popen([NODE_EXPORTER, "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={directory}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"node_exporter ended: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.1)
        raise AssertionError("node_exporter did not answer")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def needs_node_exporter() -> None:
    needs(NODE_EXPORTER, "prometheus-node-exporter")


def test_promtool_lint_can_fail() -> None:
    """The lint above is not a formality: a counter without _total is refused."""
    assert "counter metrics should have \"_total\" suffix" in promtool_lint(
        "# HELP ksminspect_scans Scans.\n# TYPE ksminspect_scans counter\nksminspect_scans 1\n")


def test_the_alerts_are_valid_prometheus_rules() -> None:
    r = subprocess.run([needs(PROMTOOL, "prometheus (promtool)"), "check", "rules",
                        str(ROOT / "contrib" / "ksminspect-alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["6.12-explain", "7.2-seed-noreset"])
def test_node_exporter_serves_them_with_the_dumps_values(name: str, tmp_path) -> None:
    """The service's command writes into a textfile directory; node_exporter
    scrapes it without error, and the values are the dump's counters."""
    needs_node_exporter()
    dump = next(d for d in DUMPS if d.name == name)
    result = run_cli(*dump.args, "metrics", str(tmp_path / "ksminspect.prom"))
    assert result.exit_code == 0
    served = families(scrape_with_node_exporter(tmp_path))
    assert samples(served, "node_textfile_scrape_error")[0].value == 0
    merging = by(served, "ksminspect_process_ksm_merging_pages", "pid")
    truths = [(str(p["pid"]), p.get("ksm_merging_pages", (p.get("ksm_stat") or {}).get("ksm_merging_pages")))
              for p in dump.processes if not p.get("exited")]
    truths = [(pid, int(want)) for pid, want in truths if want is not None and int(want) >= 0]
    assert [merging[(pid,)] for pid, _ in truths] == [want for _, want in truths] != []
    assert samples(served, "ksminspect_ksm_full_scans_total")[0].value == int(dump.sysfs["full_scans"])
    errors = sum(s.value for s in samples(served, "ksminspect_check_findings") if s.labels["severity"] == "error")
    assert errors == (56 if dump.name == "7.2-seed-noreset" else 0)


def test_node_exporter_refuses_what_is_not_its_format(tmp_path) -> None:
    """The scrape above can fail: a file node_exporter cannot parse is an error."""
    needs_node_exporter()
    (tmp_path / "broken.prom").write_text("ksminspect_x{pid=42} one\n")
    served = families(scrape_with_node_exporter(tmp_path))
    assert samples(served, "node_textfile_scrape_error")[0].value == 1


def test_the_dashboard_and_alerts_query_only_metrics_ksminspect_writes() -> None:
    dashboard = json.loads((ROOT / "contrib" / "grafana-ksminspect.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    alerts = re.findall(r"(?m)^\s+expr: (.*)$", (ROOT / "contrib" / "ksminspect-alerts.yml").read_text())
    assert len(alerts) >= 3
    exprs += alerts
    written = set(families(run_cli(*next(d for d in DUMPS if d.name == "6.12-explain").args,
                                   "metrics").stdout))
    written |= {n + "_total" for n in written}  # a counter's samples
    for expr in exprs:
        used = set(re.findall(r"\bksminspect_[a-z_]+", expr))
        assert used and used <= written, (expr, used - written)
