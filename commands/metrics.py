"""ksminspect metrics: what explain and check know, for Prometheus.

The text is the exposition format node_exporter's textfile collector reads
(Prometheus text format 0.0.4); a FILE is written atomically (a temporary
file beside it, then a rename), as textfile collectors need.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Iterable, Iterator

import click

from .params import COUNT
from .records import document
from .render import emit_json


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) and abs(value) < 2 ** 53 else repr(value)


def exposition(families: Iterable) -> Iterator[str]:
    """The lines of Prometheus text format 0.0.4: HELP and TYPE, then the
    samples, of each family."""
    for f in families:
        yield f"# HELP {f.name} {_escape(f.help, False)}"
        yield f"# TYPE {f.name} {f.type}"
        for labels, value in f.samples:
            inner = ",".join(f'{k}="{_escape(v, True)}"' for k, v in labels.items())
            yield f"{f.name}{{{inner}}} {_number(value)}" if inner else f"{f.name} {_number(value)}"


def write_atomically(path: str, text: str) -> None:
    """*text* into *path* by a rename: a reader sees the old file or the new
    one, never half of one. The temporary name does not end in .prom, so a
    textfile collector never reads it."""
    where = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # node_exporter runs as another user
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@click.command("metrics")
@click.argument("file", default="-", type=click.Path(dir_okay=False, writable=True, allow_dash=True))
@click.option("--max-processes", type=COUNT, default=500, show_default=True, metavar="N",
              help="Series per process for the N with most mergeable memory; the rest as one (comm "
                   "\"(others)\"): a bounded number of series on a host of thousands.")
@click.option("-f", "--format", "fmt", type=click.Choice(["prometheus", "json"]), default="prometheus",
              show_default=True, help="prometheus: the text node_exporter's textfile collector reads; "
                                      "json: the same families as a document of the schema.")
@click.pass_obj
def metrics(app, file: str, max_processes: int, fmt: str) -> None:
    """What explain and check know, as metrics for Prometheus, in one read.

    Per process and per memory cgroup: memory by explain's states, KSM
    profit (the kernel's and ksminspect's), rmap_items; per check: findings
    by severity, and where it cannot tell; the scan's pace and convergence.
    FILE ('-', the default: stdout) is written atomically; point it into
    node_exporter's --collector.textfile.directory (contrib/ has a systemd
    timer that does).

    \b
    Examples:
      sudo ksminspect metrics /var/lib/prometheus/node-exporter/ksminspect.prom
      ksminspect -c vmcore.xz -s vmlinux.debug.xz metrics
    """
    from ksminspect.errors import KsmInspectError
    from ksminspect.metrics import gather

    if file != "-":  # said before the walk, not after it
        where = os.path.dirname(os.path.abspath(file))
        if not os.path.isdir(where):
            raise KsmInspectError(f"cannot write {file}: there is no directory {where}")
        if not os.access(where, os.W_OK):
            raise KsmInspectError(f"cannot write {file}: {where} is not writable")
    families = gather(app.prog, app.live, max_processes)
    if fmt == "json":
        data = document("metrics", {"families": [
            {"name": f.name, "type": f.type, "help": f.help,
             "samples": [{"labels": labels, "value": value} for labels, value in f.samples]}
            for f in families]})
        if file == "-":
            emit_json(data)
            return
        import json
        text = json.dumps(data) + "\n"
    else:
        text = "\n".join(exposition(families)) + "\n"
        if file == "-":
            click.echo(text, nl=False)
            return
    try:
        write_atomically(file, text)
    except OSError as e:
        raise KsmInspectError(f"cannot write {file}: {e.strerror or e}") from None
