"""ksminspect's cache: dumps decompressed or reassembled once, and the
VMCOREINFO found in a dump's memory. Keyed by the source's path, size and
mtime; bounded in size, the least recently used copies going first."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
from typing import BinaryIO, Callable, NamedTuple, Optional

from ksminspect.errors import TargetError, UsageError

# The size the cache is trimmed to after each new copy (KSMINSPECT_CACHE_MAX,
# in GB): a few dumps, not every dump ever read.
DEFAULT_MAX_GB = 20.0

# The entries this process reads: never trimmed while it runs.
_IN_USE: set[str] = set()


def cache_dir() -> str:
    named = os.environ.get("KSMINSPECT_CACHE")
    base = named or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                 "ksminspect")
    setting = f"KSMINSPECT_CACHE={named}" if named else f"the cache directory {base}"
    if os.path.exists(base) and not os.path.isdir(base):
        raise UsageError(f"{setting} is not a directory: point KSMINSPECT_CACHE at a directory "
                         f"(it is made where missing)")
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{setting} cannot be made ({e.strerror}): point KSMINSPECT_CACHE at a "
                         f"directory you can write") from None
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{setting} is not writable: point KSMINSPECT_CACHE at a directory you can write")
    return base


def max_bytes() -> int:
    """KSMINSPECT_CACHE_MAX in bytes."""
    text = os.environ.get("KSMINSPECT_CACHE_MAX", "").strip()
    if not text:
        return int(DEFAULT_MAX_GB * 1e9)
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not 0 <= gb < 1e9:  # also nan
        raise UsageError(f"KSMINSPECT_CACHE_MAX={text} is not a size in GB: give a number such as "
                         f"{DEFAULT_MAX_GB:g} (0 keeps only what the running command reads)")
    return int(gb * 1e9)


def cache_key(path: str, *more: str) -> str:
    """A cached entry's key for *path*: its path, size and mtime (and *more*)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise TargetError(f"cannot open {path}: {e.strerror}") from None
    text = "\0".join([os.path.abspath(path), str(st.st_size), str(st.st_mtime_ns), *more])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Reading(io.FileIO):
    """A file read from start to end, its progress shown on stderr."""

    def __init__(self, path: str):
        super().__init__(path, "rb")
        self._size = max(os.fstat(self.fileno()).st_size, 1)
        self._shown = -1

    def _show(self) -> None:
        percent = min(self.tell() * 100 // self._size, 100)
        if percent != self._shown:
            self._shown = percent
            sys.stderr.write(f"\rksminspect: {percent}% of {self._size / 1e6:.0f} MB read")
            sys.stderr.flush()

    def read(self, size: Optional[int] = -1) -> bytes:
        data = super().read(size)
        self._show()
        return data

    def readinto(self, buffer) -> int:
        count = super().readinto(buffer)
        self._show()
        return count

    def close(self) -> None:
        if not self.closed and self._shown >= 0:
            sys.stderr.write("\n")
        super().close()


def reading(path: str) -> BinaryIO:
    """*path* opened to be read once through: with a progress line on
    stderr when it is a terminal (a dump takes minutes to decompress)."""
    return _Reading(path) if sys.stderr.isatty() else open(path, "rb")


def cached_copy(path: str, name: str, make: Callable[[str, str], None], doing: str) -> str:
    """The copy of *path* that ``make(path, out)`` writes, kept in the cache
    as *name* and made once; *doing* says what making it is ("decompressing")."""
    limit = max_bytes()  # a bad setting is said before minutes of work
    out = os.path.join(cache_dir(), f"{cache_key(path)}-{name}")
    _IN_USE.add(out)
    if os.path.exists(out):
        os.utime(out)  # used: the last to go when the cache is trimmed
        return out
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=".partial-")
    os.close(fd)
    if sys.stderr.isatty():  # a dump takes a while: say what is going on, once
        print(f"ksminspect: {doing} {path} into {cache_dir()} (once)...", file=sys.stderr)
    try:
        make(path, tmp)
        os.replace(tmp, out)
        with open(_source_of(out), "w") as f:
            f.write(os.path.abspath(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    held = sum(e.size for e in entries()) - sum(e.size for e in trim(limit))
    if held > limit:
        print(f"ksminspect: note: the cache holds {held / 1e9:.1f} GB, above KSMINSPECT_CACHE_MAX "
              f"({limit / 1e9:g} GB): what this command reads stays until it ends", file=sys.stderr)
    return out


def _source_of(entry: str) -> str:
    """The file beside an entry that names what it was made from."""
    head, name = os.path.split(entry)
    return os.path.join(head, f".{name}.source")


class Entry(NamedTuple):
    path: str
    size: int
    used: float  # mtime: when it was last made or used
    source: Optional[str]  # the file it was made from, where known


def entries() -> list[Entry]:
    """What the cache holds, the most recently used first."""
    out = []
    for name in os.listdir(cache_dir()):
        if name.startswith("."):  # being written (maybe by another run), or a source's name
            continue
        path = os.path.join(cache_dir(), name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        try:
            with open(_source_of(path)) as f:
                source: Optional[str] = f.read().strip() or None
        except OSError:
            source = None
        out.append(Entry(path, st.st_size, st.st_mtime, source))
    return sorted(out, key=lambda e: -e.used)


def trim(limit: Optional[int] = None) -> list[Entry]:
    """Remove the least recently used entries until the cache holds at most
    *limit* bytes (KSMINSPECT_CACHE_MAX); what this process reads stays.
    Returns what went."""
    limit = max_bytes() if limit is None else limit
    total, gone = 0, []
    for e in entries():
        total += e.size
        if total > limit and e.path not in _IN_USE:
            total -= e.size
            if remove(e):
                gone.append(e)
    return gone


def remove(entry: Entry) -> bool:
    """*entry* and the name of its source gone; False where it cannot be."""
    try:
        os.unlink(entry.path)
    except OSError:
        return False
    try:
        os.unlink(_source_of(entry.path))
    except OSError:
        pass
    return True


def age(entry: Entry) -> str:
    minutes = (time.time() - entry.used) / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.0f} h" if minutes < 2880 \
        else f"{minutes / 1440:.0f} days"
