"""The spool directory on disk: its paths, checks, subdirectories, the lock, and the
file-system primitives every other part uses (directory fsync, atomic file
writes, moves that never overwrite).  The layout itself is described in
``carerix_smtp/spool/spool.py``."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from carerix_smtp.errors import CxsmtpError, ExitCode, SpoolError

STATE_DIR = ".cxsmtp"
SUFFIX = ".eml"
RECORD_SUFFIX = ".json"  # NAME.eml.json beside NAME.eml
STALE_TMP_AGE = 86_400.0  # issue 4: files in SPOOL/tmp older than a day are reported

Kind = Literal["queued", "deferred"]
Destination = Literal["sent", "failed", "deferred"]
KINDS: tuple[Kind, Kind] = ("deferred", "queued")


class SpoolBusyError(CxsmtpError):
    """Another cxsmtp process holds the spool lock (exit 75: try again later)."""

    exit_code = ExitCode.TEMPFAIL


class SpoolLayout:
    """Where everything is in one spool directory, and the primitives that change it."""

    def __init__(self, path: Path, *, durable: bool, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.durable = durable
        self.state_dir = self.path / STATE_DIR
        self.claims_dir = self.state_dir / "claims"
        self.journal_path = self.state_dir / "journal"
        self.delivery_log_path = self.state_dir / "delivery.log"
        self.lock_path = self.state_dir / "lock"
        self.token_prefix = f"{int(clock()):x}{os.getpid():x}{secrets.token_hex(3)}"
        self._tmp_seq = itertools.count()  # next() is atomic: no lock needed
        self.top_str = str(self.path)
        self.deferred_str = str(self.path / "deferred")
        self.claims_str = str(self.claims_dir)
        self.claim_dirs = {kind: self.claims_dir / kind for kind in KINDS}
        self.dest_dirs = {dest: self.path / dest for dest in ("sent", "failed", "deferred")}

    def dir(self, name: str) -> Path:
        return self.path / name

    def origin_dir(self, kind: Kind) -> Path:
        return self.dir("deferred") if kind == "deferred" else self.path

    # -- validation and layout --

    def check(self, *, writable: bool = True) -> None:
        """SpoolError (exit 78) unless SPOOL is an existing, usable directory."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SpoolError(
                f"spool {self.path}: no such directory",
                hint=f"create it: mkdir -p {self.path}",
            ) from None
        except OSError as exc:
            raise SpoolError(f"spool {self.path}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SpoolError(f"spool {self.path}: not a directory")
        mode = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
        if not os.access(self.path, mode):
            what = "writable" if writable else "readable"
            raise SpoolError(f"spool {self.path}: not {what} by this user (uid {os.getuid()})")

    def prepare(self) -> None:
        """Check SPOOL and create the subdirectories it needs (idempotent)."""
        self.check(writable=True)
        try:
            for sub in (
                self.state_dir,
                self.claims_dir,
                self.claims_dir / "queued",
                self.claims_dir / "deferred",
                self.dir("deferred"),
                self.dir("sent"),
                self.dir("failed"),
                self.dir("tmp"),
            ):
                sub.mkdir(
                    mode=0o700 if sub.is_relative_to(self.state_dir) else 0o755, exist_ok=True
                )
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path}: cannot create {exc.filename}: {exc.strerror}"
            ) from None

    def claimed(self) -> list[Path]:
        """Every entry in claims/queued/ and claims/deferred/ (messages in flight)."""
        out: list[Path] = []
        for kind in ("queued", "deferred"):
            with contextlib.suppress(FileNotFoundError), os.scandir(self.claims_dir / kind) as it:
                out.extend(Path(e.path) for e in it)
        return out

    # -- the lock --

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """flock(LOCK_EX|LOCK_NB) on .cxsmtp/lock; yields False if another process holds it.

        flock locks belong to the open file and go away when the holder dies, even
        by SIGKILL, so no stale lock can stop mail (unlike pid files).
        """
        self.prepare()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(
                f"spool {self.path}: cannot open {self.lock_path}: {exc.strerror}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise SpoolError(
                    f"spool {self.path}: cannot lock {self.lock_path}: {exc}"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock

    def holder_pid(self) -> int | None:
        """The pid of the process holding the lock, or None when nobody does."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # -- durability helpers --

    def fsync_dir(self, directory: Path) -> None:
        if not self.durable:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_file(
        self, path: str | Path, data: bytes, *, mtime_ns: int | None = None, sync: bool = True
    ) -> None:
        """Atomically replace ``path``: hidden temp file beside it, fsync (unless
        ``sync`` is False: the next checkpoint does it), rename."""
        # unique without a getrandom(2) per record: this run's prefix and a counter
        tmp = os.path.join(
            os.path.dirname(path), f".cxsmtp-{self.token_prefix}-{next(self._tmp_seq):x}.tmp"
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.durable and sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def move_noreplace(self, src: Path, directory: Path, name: str) -> Path:
        """Move ``src`` into ``directory`` as ``name``, or a free variant; never overwrite.

        Into the top level (shared with producers) this is link + unlink, which
        fails instead of replacing a file a producer just dropped there.
        """
        target = directory / name
        if os.path.lexists(target):
            target = directory / variant(name)
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            target = directory / variant(name)
            os.link(src, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(src, target)  # no hard links on this file system (or a directory)
            return target
        os.unlink(src)
        return target


def file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "other"


def variant(name: str) -> str:
    """``x.eml`` -> ``x~1a2b3c4d.eml``: a free name when ``x.eml`` is taken."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{stem}~{secrets.token_hex(4)}{SUFFIX}"


def same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
