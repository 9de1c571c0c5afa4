"""ksminspect inside drgn: the ``%ksm`` command of drgn's REPL.

drgn loads this module through the ``drgn.plugins`` entry point that the
ksminspect package registers; importing it registers the command. In
``drgn -c vmcore``, ``%ksm stable-tree --min-sharers 4`` runs ksminspect's
``stable-tree`` on the program drgn has open.
"""

from __future__ import annotations

from typing import Any

from drgn import Program
from drgn.commands import ParsedCommand, parse_shell_command
from drgn.commands.linux import linux_kernel_custom_command


def _parse(source: str) -> ParsedCommand[Any]:
    return parse_shell_command(source)


@linux_kernel_custom_command(
    name="ksm",
    description="inspect kernel samepage merging (ksminspect)",
    usage="**ksm** *COMMAND* [*OPTIONS*]",
    long_description="Runs a ksminspect command (summary, mm, rmap, stable-tree, "
    "unstable-tree, page, check, snapshot, diff) on this program. "
    "For example: %ksm stable-tree --min-sharers 4, %ksm check --format json.",
    parse=_parse,
)
def _cmd_ksm(prog: Program, name: str, args: Any, **kwargs: Any) -> Any:
    from .main import App, run

    code = run(list(args), App(None, (), prog=prog))
    return None if code == 0 else code
