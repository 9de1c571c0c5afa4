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

    if not list(args):
        print(usage())
        return None
    code = run(list(args), App(None, (), prog=prog))
    return None if code == 0 else code


def usage() -> str:
    """What %ksm alone says: its commands, on the program drgn has open
    (ksminspect's own help would offer -c and -s, which drgn's -c replaces)."""
    from .main import cli

    commands = [(n, c.get_short_help_str(60)) for n, c in cli.commands.items() if n != "cache"]
    width = max(len(n) for n, _ in commands)
    return "\n".join(["usage: %ksm COMMAND [OPTIONS]: ksminspect on the kernel drgn has open", ""]
                     + [f"  {n:<{width}}  {h}" for n, h in commands]
                     + ["", "%ksm COMMAND --help: a command's options and examples"])
