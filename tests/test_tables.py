"""Tables for a terminal: every table command on every dump fits 80 and 120
columns, addresses whole; colour only on a terminal, and never with NO_COLOR."""

from __future__ import annotations

import re

import pytest

from conftest import ALL_DUMPS, REFUSED_DUMPS, command_lines, run_on

READABLE = [d for d in ALL_DUMPS if d.sysfs and d not in REFUSED_DUMPS]
ADDRESS = re.compile(r"0x[0-9a-f]+")


@pytest.mark.parametrize("target", READABLE, ids=lambda d: d.name)
def test_every_table_fits_the_terminal(target, tmp_path) -> None:
    for name in ("before", "after"):
        assert run_on(target, "snapshot", str(tmp_path / f"{name}.json")).exit_code == 0
    lines = command_lines(target) + [["diff", str(tmp_path / "before.json"), str(tmp_path / "after.json")]]
    for width in (80, 120):
        for line in lines:
            wide = run_on(target, *line)  # no terminal, no $COLUMNS: no limit
            result = run_on(target, *line, columns=width)
            assert result.exit_code == wide.exit_code, (line, result.stderr)
            over = [text for text in result.stdout.splitlines() if len(text) > width]
            assert not over, f"{' '.join(line)} at {width} columns: {over[:3]}"
            # what was folded is all there: every address, whole
            assert sorted(ADDRESS.findall(result.stdout)) == sorted(ADDRESS.findall(wide.stdout)), line


def test_no_colour_off_a_terminal_and_with_no_color(monkeypatch) -> None:
    from ksminspect.commands import render

    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    with render.terminal_output(paged=False):
        assert render.severity("error") != "error" and "\x1b[" in render.severity("error")
    monkeypatch.setenv("NO_COLOR", "1")
    with render.terminal_output(paged=False):
        assert render.severity("error") == "error"


def test_a_table_too_wide_becomes_blocks_and_prose_folds(monkeypatch, capsys) -> None:
    """Pure rendering: a row too wide for any table layout is written as
    "header value" pairs; a long word is never broken."""
    from ksminspect.commands.render import emit_table

    monkeypatch.setenv("COLUMNS", "40")
    emit_table([["0xffff888100000040", "0x7f0000001000", "anon_vma=0xffff888100002000 head=0x0"]],
               ["item", "page address", "fields"], wrap=["fields"])
    out = capsys.readouterr().out.splitlines()
    assert out == ["item 0xffff888100000040", "    page address 0x7f0000001000",
                   "    fields anon_vma=0xffff888100002000", "    head=0x0"]
    assert all(len(line) <= 40 for line in out)


def test_on_a_terminal_colour_and_a_pager(tmp_path) -> None:
    """On a terminal (script(1) makes one): the width is the terminal's,
    severities are coloured, and the output goes through the pager; with
    NO_COLOR no colour."""
    import os
    import shlex
    import subprocess
    import sys

    from conftest import DUMPS

    dump = next(d for d in DUMPS if d.name == "7.2-seed-noreset")
    ksminspect = os.path.join(os.path.dirname(sys.executable), "ksminspect")
    for no_color in (False, True):
        paged = tmp_path / f"paged-{no_color}"
        command = shlex.join([ksminspect, *dump.args, "check", "--limit", "2"])
        env = dict(os.environ, KSMINSPECT_PAGER=f"tee {paged} >/dev/null", COLUMNS="90")
        env.pop("NO_COLOR", None)
        if no_color:
            env["NO_COLOR"] = "1"
        r = subprocess.run(["script", "-qec", command, "/dev/null"], env=env,
                           stdout=subprocess.PIPE, text=True, timeout=600)
        assert r.returncode == 1, r.stdout
        text = paged.read_text()
        assert re.search(r"^KSM is not healthy: 2 of 21 checks fail: 56 errors, 0 warnings, \d+ info", text)
        assert ("\x1b[" in text) is not no_color
        assert all(len(line) <= 90 for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines())


def test_long_column_names_fold_before_a_table_gives_up() -> None:
    """mm at 120 columns is wider only by its names (merging_pages over
    35): they go on two lines, and the rows stay a table."""
    import os
    import subprocess
    import sys

    from conftest import DUMPS

    dump = next(d for d in DUMPS if d.name == "6.12-explain")
    ksminspect = os.path.join(os.path.dirname(sys.executable), "ksminspect")
    r = subprocess.run([ksminspect, *dump.args, "mm"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, COLUMNS="120"))
    lines = r.stdout.splitlines()
    assert lines[0].split()[-4:] == ["rmap_", "merging_", "zero_", "process_"], lines[:2]
    assert lines[1].split() == ["items", "pages", "pages", "profit"]
    assert set(lines[2]) == {"-", " "} and max(map(len, lines)) <= 120


def test_counts_in_headers_do_not_change_under_limit() -> None:
    from conftest import run_cli, DUMPS

    dump = next(d for d in DUMPS if d.name == "6.12-explain")
    whole = run_cli(*dump.args, "stable-tree").stdout.splitlines()
    cut = run_cli(*dump.args, "stable-tree", "--limit", "2").stdout.splitlines()
    assert cut[0] == whole[0] + ", 2 shown" and cut[-1] == whole[-1]
    whole = run_cli(*dump.args, "unstable-tree").stdout.splitlines()[0]
    cut = run_cli(*dump.args, "unstable-tree", "--limit", "2").stdout.splitlines()[0]
    assert cut == whole.replace(" items (", " items, 2 shown (")
