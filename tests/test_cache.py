"""The cache of decompressed dumps: bounded, least recently used first, and
listed and cleared by `ksminspect cache`."""

from __future__ import annotations

import gzip
import os

from conftest import run_cli

from ksminspect import cache


def test_cache_is_trimmed_least_recently_used_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KSMINSPECT_CACHE_MAX", str(2.5e6 / 1e9))  # room for two 1 MB copies
    sources = []
    for n in range(3):
        src = tmp_path / f"dump{n}.gz"
        with gzip.open(src, "wb") as f:
            f.write(bytes([n]) * 1_000_000)
        sources.append(src)

    def copy(src, out):
        with gzip.open(src) as f, open(out, "wb") as g:
            g.write(f.read())

    first = cache.cached_copy(str(sources[0]), "dump0", copy, "decompressing")
    second = cache.cached_copy(str(sources[1]), "dump1", copy, "decompressing")
    os.utime(second, (1, 1))  # long unused
    cache._IN_USE.clear()  # a later run: what this one read may go now
    assert cache.cached_copy(str(sources[0]), "dump0", copy, "decompressing") == first  # used again
    third = cache.cached_copy(str(sources[2]), "dump2", copy, "decompressing")
    assert os.path.exists(first) and os.path.exists(third) and not os.path.exists(second)


def test_cache_command_lists_and_clears(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "0123456789abcdef-vmcore").write_bytes(b"x" * 2_000_000)
    listed = run_cli("cache")
    assert listed.exit_code == 0
    assert "0123456789abcdef-vmcore" in listed.stdout and "1 entry, 0.0 GB" in listed.stdout
    assert "(not recorded)" in listed.stdout  # made before the source was recorded
    cleared = run_cli("cache", "clear")
    assert cleared.exit_code == 0 and "removed 1 entry" in cleared.stderr
    assert not os.listdir(tmp_path / "cache")


def test_decompressing_shows_its_progress_on_a_terminal(tmp_path, monkeypatch, capsys) -> None:
    """A dump takes minutes to decompress: on a terminal, stderr shows how
    far it is; elsewhere nothing (pure file handling, no dump needed)."""
    import random

    from ksminspect.program import decompressed

    monkeypatch.setenv("KSMINSPECT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "vmcore.gz"
    with gzip.open(src, "wb", compresslevel=1) as f:
        f.write(random.Random(1).randbytes(4_000_000))  # incompressible: many reads
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    out = decompressed(str(src))
    assert os.path.getsize(out) == 4_000_000
    err = capsys.readouterr().err
    assert "ksminspect: decompressing" in err and "ksminspect: 100% of 4 MB read\n" in err
    assert err.count("\r") > 2


def test_a_small_cache_never_evicts_what_the_command_reads(tmp_path) -> None:
    """KSMINSPECT_CACHE_MAX=0: the vmlinux decompressed first stays while
    the dump is decompressed, the command works, and a note says the
    setting could not be honoured; `cache` names each entry's source."""
    import json
    import subprocess

    from conftest import DUMPS
    from test_errors import KSMINSPECT

    dump = next(d for d in DUMPS if d.name == "7.2-seed-noreset")
    env = dict(os.environ, KSMINSPECT_CACHE=str(tmp_path / "cache"), KSMINSPECT_CACHE_MAX="0")
    r = subprocess.run([KSMINSPECT, *dump.args, "summary", "-f", "json"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["document"] == "summary"
    assert "above KSMINSPECT_CACHE_MAX (0 GB): what this command reads stays until it ends" in r.stderr
    listed = subprocess.run([KSMINSPECT, "cache", "-f", "json"], env=env, capture_output=True, text=True)
    sources = {e["source"] for e in json.loads(listed.stdout)["entries"]}
    assert sources == {str(dump.vmcore.resolve()), str(dump.debug.resolve())}
    table = subprocess.run([KSMINSPECT, "cache"], env=env, capture_output=True, text=True)
    assert "made from" in table.stdout and str(dump.vmcore.resolve()) in table.stdout.replace("\n", "")
