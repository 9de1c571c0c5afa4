"""The ksminspect command group: global options, the application object and
the one path by which errors reach the user."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import click

from ksminspect import __version__
from ksminspect.errors import EXIT_CANNOT_INSPECT, KsmInspectError


class App:
    """What every command shares: the target, opened on first use (or given:
    inside drgn, the program drgn already has)."""

    def __init__(self, core: Optional[str], symbols: Sequence[str], prog=None):
        self.core = core
        self.symbols = tuple(symbols)
        self._prog = prog
        # Inside drgn the process is not ours: process-wide state (signal
        # handlers) must be left as it was found.
        self.embedded = prog is not None
        self._session_begun = False

    @property
    def prog(self):
        from ksminspect.layout import get_layout
        from ksminspect.program import check_kernel_addresses
        from ksminspect.session import begin_session

        if self._prog is None:
            from ksminspect.program import open_program

            self._prog = open_program(self.core, self.symbols)
            note = self._prog.cache.get("ksminspect_vmcoreinfo_note")
            if note:
                click.echo(f"ksminspect: note: {note}", err=True)
            truncated = self._prog.cache.get("ksminspect_truncated")
            if truncated:
                click.echo(f"ksminspect: warning: {truncated}; reading what it holds", err=True)
        check_kernel_addresses(self._prog)  # cached, as the layout is
        get_layout(self._prog)  # no KSM: fail here, before any output (cached)
        if not self._session_begun:  # this command reads the kernel afresh
            begin_session(self._prog)
            self._session_begun = True
        return self._prog

    @property
    def live(self) -> bool:
        if self._prog is not None:
            import drgn

            return bool(self._prog.flags & drgn.ProgramFlags.IS_LIVE)
        return self.core is None


class _TargetPath(click.Path):
    """-c and -s: an existing file, said in click's words, except inside
    drgn, where the kernel is drgn's and the group refuses both anyway."""

    def convert(self, value, param, ctx):
        if ctx is not None and isinstance(ctx.obj, App) and ctx.obj.embedded:
            return value
        return super().convert(value, param, ctx)


class _Cli(click.Group):
    """Takes -c/--core and -s/--symbols after the command too (``ksminspect
    summary -c vmcore -s vmlinux``), as crash and drgn users type them, and
    -f/--format before it."""

    GLOBAL = ("-c", "--core", "-s", "--symbols")
    FORMAT = ("-f", "--format")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._hoist(list(args)))

    def _hoist(self, args: list[str]) -> list[str]:
        i, before, fmt = 0, [], []
        while i < len(args) and args[i] not in self.commands:  # the global part
            step = 2 if args[i] in self.GLOBAL + self.FORMAT else 1
            (fmt if args[i] in self.FORMAT else before).extend(args[i:i + step])
            i += step
        if i >= len(args):
            return args
        command, rest, moved = args[i], fmt, []
        j = i + 1
        while j < len(args):
            a = args[j]
            if a == "--":
                rest += args[j:]
                break
            if a in self.GLOBAL and j + 1 < len(args):
                moved += args[j:j + 2]
                j += 2
                continue
            if a.startswith(("--core=", "--symbols=")):
                moved.append(a)
            else:
                rest.append(a)
            j += 1
        return before + moved + [command] + rest


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--core", metavar="PATH", type=_TargetPath(exists=True, dir_okay=False),
              help="vmcore to inspect (.zst, .xz, .gz are decompressed once into "
                   "~/.cache/ksminspect); without it, the running kernel via /proc/kcore.")
@click.option("-s", "--symbols", metavar="PATH", multiple=True, type=_TargetPath(exists=True, dir_okay=False),
              help="vmlinux or kernel debug file (repeatable); without it, drgn's "
                   "default debug info search.")
@click.version_option(__version__, prog_name="ksminspect")
@click.pass_context
def cli(ctx: click.Context, core: Optional[str], symbols: tuple[str, ...]) -> None:
    """Inspect kernel samepage merging (KSM) in a live kernel or a vmcore.

    \b
    Examples:
      ksminspect summary                      # the running kernel, as root
      ksminspect -c vmcore -s vmlinux summary --format json
    """
    if not isinstance(ctx.obj, App):  # inside drgn the App comes with its program
        ctx.obj = App(core, symbols)
    elif core or symbols:
        raise KsmInspectError("-c and -s choose the kernel, and inside drgn the kernel is the one "
                              "drgn has: start drgn with -c VMCORE -s VMLINUX instead")
    _APP[:] = [ctx.obj]


def _register() -> None:
    from .cache import cache_command
    from .check import check
    from .explain import explain_command
    from .metrics import metrics
    from .mm import mm_command
    from .page import page
    from .rmap import rmap, unstable_tree
    from .snapshot import diff, snapshot
    from .stable_tree import stable_tree
    from .summary import summary

    for command in (summary, mm_command, rmap, stable_tree, unstable_tree, page, check, explain_command,
                    metrics, snapshot, diff, cache_command):
        cli.add_command(command)


_register()


def fail(message: str, code: int = EXIT_CANNOT_INSPECT) -> int:
    click.echo(f"ksminspect: {message}", err=True)
    return code


_APP: list[App] = []  # the App of this run, for messages after it failed


def _truncated_note() -> Optional[str]:
    if _APP and _APP[0]._prog is not None:
        return _APP[0]._prog.cache.get("ksminspect_truncated")
    return None


def run(argv: Optional[Sequence[str]] = None, app: Optional[App] = None) -> int:
    """Run one ksminspect command line; returns its exit code. Every error
    ends here as one sentence on stderr."""
    import gc

    # A walk makes millions of small acyclic records; the cyclic collector
    # would rescan them all, again and again, for nothing (up to 40% of
    # stable-tree's time at a million items). Refcounting frees them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(argv, app)
    finally:
        (gc.enable if collecting else gc.disable)()  # as found (a watch turns it on)


def _run(argv: Optional[Sequence[str]], app: Optional[App]) -> int:
    import logging

    import drgn

    # drgn logs each missing debug file; ksminspect says it once, in its words.
    logging.getLogger("drgn").setLevel(logging.CRITICAL)
    from .render import terminal_output

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # no pager inside drgn (its REPL is the terminal's) nor for a watch
        with terminal_output(paged=app is None and "--watch" not in args):
            rv = cli.main(args=args, prog_name="ksminspect", standalone_mode=False, obj=app)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        return fail("aborted", 130)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except KsmInspectError as e:
        return fail(str(e), e.exit_code)
    except drgn.FaultError as e:
        from ksminspect.program import is_gap, lacks_memory
        prog = _APP[0]._prog if _APP else None
        truncated = _truncated_note()
        if prog is not None and not truncated and is_gap(prog, e):  # left out: say what it lacks
            from ksminspect.layout import get_layout
            page = e.address & get_layout(prog).page_mask
            return fail(f"cannot tell: {lacks_memory(prog, [page])}", EXIT_CANNOT_INSPECT)
        return fail(f"memory the inspection needs cannot be read ({e}); "
                    + (truncated if truncated else "the dump may be truncated or damaged"))
    except NotImplementedError as e:  # a drgn helper this architecture lacks
        return fail(f"this needs what drgn cannot do for this kernel's architecture ({e}); "
                    f"the other commands may still work")
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away: not an error of ours
        return 0
    except Exception as e:  # a bug of ours, or data no check foresaw
        if os.environ.get("KSMINSPECT_DEBUG"):
            raise
        return fail(f"internal error: {type(e).__name__}: {e} (set KSMINSPECT_DEBUG=1 for the "
                    f"traceback, and please report it)")
    return rv if isinstance(rv, int) else 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    # A reader that goes away (`| head`) ends the command as it ends git's:
    # quietly, by SIGPIPE. (Python ignores SIGPIPE, and click then turns the
    # failed write into exit code 1, the code of error-level findings.)
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(run(argv))
