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

from ksminspect.errors import TargetError

# The size the cache is trimmed to after each new copy (KSMINSPECT_CACHE_MAX,
# in GB): a few dumps, not every dump ever read.
DEFAULT_MAX_GB = 20.0


def cache_dir() -> str:
    base = os.environ.get("KSMINSPECT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ksminspect")
    os.makedirs(base, exist_ok=True)
    return base


def max_bytes() -> int:
    try:
        gb = float(os.environ.get("KSMINSPECT_CACHE_MAX", DEFAULT_MAX_GB))
    except ValueError:
        gb = DEFAULT_MAX_GB
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
    out = os.path.join(cache_dir(), f"{cache_key(path)}-{name}")
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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    trim(keep=out)
    return out


class Entry(NamedTuple):
    path: str
    size: int
    used: float  # mtime: when it was last made or used


def entries() -> list[Entry]:
    """What the cache holds, the most recently used first."""
    out = []
    for name in os.listdir(cache_dir()):
        if name.startswith(".partial-"):  # being written, maybe by another run
            continue
        path = os.path.join(cache_dir(), name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append(Entry(path, st.st_size, st.st_mtime))
    return sorted(out, key=lambda e: -e.used)


def trim(limit: Optional[int] = None, keep: Optional[str] = None) -> list[Entry]:
    """Remove the least recently used entries until the cache holds at most
    *limit* bytes (KSMINSPECT_CACHE_MAX); *keep* stays. Returns what went."""
    limit = max_bytes() if limit is None else limit
    total, gone = 0, []
    for e in entries():
        total += e.size
        if total > limit and e.path != keep:
            total -= e.size
            try:
                os.unlink(e.path)
                gone.append(e)
            except OSError:
                pass
    return gone


def age(entry: Entry) -> str:
    minutes = (time.time() - entry.used) / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.0f} h" if minutes < 2880 \
        else f"{minutes / 1440:.0f} days"
