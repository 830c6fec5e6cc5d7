"""The spool directory on disk: its paths, checks, subdirectories, the lock, and the
file-system primitives every other part uses (directory fsync, atomic file
writes, moves that never overwrite).  The layout itself is described in
``carerix_smtp/spool/spool.py``.

What the spool trusts: SPOOL as the admin names it (it may be a symlink: their
choice, followed once, when it is opened) and its owner.  Not the producers who
may write into SPOOL: the names directly in it (``sent``, ``.cxsmtp``…) are theirs
to rename or replace by a symlink at any moment.  So every subdirectory is opened
once, relative to the one above it, with O_NOFOLLOW|O_DIRECTORY (a symlink is
refused: SymlinkRefusedError, exit 78), and every change goes through those
descriptors (``dir_fd``): a name swapped after that cannot redirect a write, a
move or a new file to another directory.  Every OSError of a change becomes a
StorageError naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import stat
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from carerix_smtp.errors import (
    CxsmtpError,
    ExitCode,
    SpoolError,
    StorageError,
    SymlinkRefusedError,
)

STATE_DIR = ".cxsmtp"
SUFFIX = ".eml"
RECORD_SUFFIX = ".json"  # NAME.eml.json beside NAME.eml
STALE_TMP_AGE = 86_400.0  # issue 4: files in SPOOL/tmp older than a day are reported

Kind = Literal["queued", "deferred"]
Destination = Literal["sent", "failed", "deferred"]
KINDS: tuple[Kind, Kind] = ("deferred", "queued")

# Directories by their name relative to SPOOL ("" is SPOOL itself), parents first.
TOP = ""
CLAIMS = f"{STATE_DIR}/claims"
CLAIM_DIRS: dict[Kind, str] = {kind: f"{CLAIMS}/{kind}" for kind in KINDS}
# held/: messages ``cxsmtp queue hold`` keeps from ``send`` (spool/held.py)
SUBDIRS = (STATE_DIR, CLAIMS, *CLAIM_DIRS.values(), "deferred", "held", "sent", "failed", "tmp")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW


class SpoolBusyError(CxsmtpError):
    """Another cxsmtp process holds the spool lock (exit 75: try again later)."""

    exit_code = ExitCode.TEMPFAIL


class storage:  # lower case: used like a function, ``with storage("write", path):``
    """An OSError inside becomes ``StorageError: cannot <what> <path>: <reason>``.

    A class rather than a ``contextlib.contextmanager``: it wraps a dozen file
    operations per message, and a generator-based one costs four calls each."""

    __slots__ = ("path", "what")

    def __init__(self, what: str, path: object) -> None:
        self.what = what
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, OSError):
            raise StorageError.from_os_error(exc, self.what, self.path) from exc


class SpoolLayout:
    """Where everything is in one spool directory, and the primitives that change it.

    Directories are named relative to SPOOL (``"sent"``, ``CLAIM_DIRS["queued"]``)
    and reached through descriptors opened without following symlinks (``fd``);
    paths (``path / rel``) are for messages and for readers only.
    """

    def __init__(self, path: Path, *, durable: bool, clock: Callable[[], float]) -> None:
        self.path = Path(path)
        self.durable = durable
        self.state_dir = self.path / STATE_DIR
        self.claims_dir = self.path / CLAIMS
        self.journal_path = self.state_dir / "journal"
        self.delivery_log_path = self.state_dir / "delivery.log"
        self.lock_path = self.state_dir / "lock"
        self.token_prefix = f"{int(clock()):x}{os.getpid():x}{os.urandom(3).hex()}"
        self._tmp_seq = itertools.count()  # next() is atomic: no lock needed
        self.paths = {rel: self.path / rel if rel else self.path for rel in (TOP, *SUBDIRS)}
        self.claim_dirs = {kind: self.paths[rel] for kind, rel in CLAIM_DIRS.items()}
        self._fds: dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)

    def dir(self, name: str) -> Path:
        return self.paths.get(name) or self.path / name

    def where(self, rel: str, name: str) -> str:
        """The path of ``name`` in directory ``rel``, for messages."""
        return f"{self.path}/{rel}/{name}" if rel else f"{self.path}/{name}"

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
        """Check SPOOL, create the subdirectories it needs (idempotent) and open them
        all: a symlink among them is refused before anything moves."""
        self.check(writable=True)
        for rel in SUBDIRS:
            self.fd(rel, create=True)

    def fd(self, rel: str, *, create: bool = False) -> int:
        """The descriptor of directory ``rel``, opened once, relative to its parent,
        never through a symlink (``create``: mkdir it first when missing).  A missing
        directory is a StorageError with errno ENOENT."""
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        path = self.dir(rel)
        if not rel:
            # SPOOL itself may be a symlink: the admin chose it; followed here, once.
            with storage("open", path):
                fd = os.open(path, _DIR)
        else:
            parent_rel, _, leaf = rel.rpartition("/")
            parent = self.fd(parent_rel, create=create)
            if create:
                with storage("create directory", path), contextlib.suppress(FileExistsError):
                    os.mkdir(leaf, 0o700 if rel.startswith(STATE_DIR) else 0o755, dir_fd=parent)
            try:
                fd = os.open(leaf, _DIR | os.O_NOFOLLOW, dir_fd=parent)
            except OSError as exc:
                raise refused(exc, "open directory", path, parent, leaf) from exc
        self._fds[rel] = fd
        return fd

    def close_dirs(self) -> None:
        """Close the directory descriptors (the lock is being released); the next use
        opens them again, with the same checks."""
        _close_fds(self._fds)

    def scandir(self, rel: str) -> Iterator[os.DirEntry[str]]:
        """The entries of directory ``rel``, streamed (none when it does not exist);
        ``entry.stat(follow_symlinks=False)`` works during the iteration."""
        with self.listing(rel) as entries, storage("list", self.dir(rel)):
            yield from entries

    @contextlib.contextmanager
    def listing(self, rel: str) -> Iterator[Iterator[os.DirEntry[str]]]:
        """``os.scandir``'s own iterator over directory ``rel`` (empty when it does not
        exist), for a ``with`` block: no generator step per entry, for the status of
        100,000 files.  An OSError while iterating is the caller's to wrap (``storage``);
        ``entry.stat(follow_symlinks=False)`` works inside the block."""
        try:
            parent = self.fd(rel)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                yield iter(())
                return
            raise
        with storage("list", self.dir(rel)):
            # A descriptor of its own: scandir's dup would share the read offset of
            # ``parent`` with any other listing of the same directory.
            fd = os.open(".", _DIR, dir_fd=parent)
        try:
            with storage("list", self.dir(rel)):
                it = os.scandir(fd)
            with it:
                yield it
        finally:
            os.close(fd)

    def lstat(self, rel: str, name: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in ``rel``; None when it is not there."""
        try:
            return os.stat(name, dir_fd=self.fd(rel), follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError.from_os_error(exc, "stat", self.where(rel, name)) from exc

    def exists(self, rel: str, name: str) -> bool:
        # faccessat, not lstat: no exception raised for the usual answer (not there)
        return os.access(name, os.F_OK, dir_fd=self.fd(rel), follow_symlinks=False)

    def open_file(self, rel: str, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of ``name`` in ``rel``, never through a symlink."""
        fd = self.fd(rel)
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as exc:
            raise refused(exc, "open", self.where(rel, name), fd, name) from exc

    def claimed(self) -> list[Path]:
        """Every entry in claims/queued/ and claims/deferred/ (messages in flight)."""
        return [
            self.paths[rel] / entry.name
            for rel in (CLAIM_DIRS["queued"], CLAIM_DIRS["deferred"])
            for entry in self.scandir(rel)
        ]

    # -- the lock --

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """flock(LOCK_EX|LOCK_NB) on .cxsmtp/lock; yields False if another process holds it.

        flock locks belong to the open file and go away when the holder dies, even
        by SIGKILL, so no stale lock can stop mail (unlike pid files).  Releasing
        it closes the directory descriptors.
        """
        self.close_dirs()  # each locked session opens (and checks) them afresh
        try:
            self.prepare()
            fd = self.open_file(STATE_DIR, "lock", os.O_RDWR | os.O_CREAT)
        except BaseException:
            self.close_dirs()
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise StorageError.from_os_error(exc, "lock", self.lock_path) from exc
            with storage("write the pid to", self.lock_path):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield True
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # on the way out: a full disk must not hide why
        finally:
            os.close(fd)  # releases the flock
            self.close_dirs()

    def holder_pid(self) -> int | None:
        """The pid of the process holding the lock, or None when nobody does."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
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

    def fsync_dir(self, rel: str) -> None:
        if not self.durable:
            return
        with storage("sync directory", self.dir(rel)):
            os.fsync(self.fd(rel))

    def write_file(
        self,
        rel: str,
        name: str,
        data: bytes,
        *,
        mtime_ns: int | None = None,
        sync: bool = True,
        mode: int = 0o644,
    ) -> None:
        """Atomically replace ``name`` in ``rel``: hidden temp file beside it, fsync
        (unless ``sync`` is False: the next checkpoint does it), rename.  On any
        error the temp file is removed: never a half-written file."""
        # unique without a getrandom(2) per record: this run's prefix and a counter
        tmp = f".cxsmtp-{self.token_prefix}-{next(self._tmp_seq):x}.tmp"
        fd = self.open_file(rel, tmp, _NEW, mode)
        dir_fd = self.fd(rel)
        try:
            with storage("write", self.where(rel, name)):
                try:
                    write_all(fd, data)
                    if mtime_ns is not None:
                        os.utime(fd, ns=(mtime_ns, mtime_ns))
                    if self.durable and sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def set_due(
        self, rel: str, names: Sequence[str], when: float, *, missing_ok: bool = False
    ) -> int:
        """Set the mtime (next attempt) of ``names`` in ``rel`` in place, then touch ``rel``
        (a status cache keeps a directory while its times stay: status_cache.py); how
        many were set (``missing_ok``: one gone meanwhile is skipped, else raises)."""
        fd, count = self.fd(rel), 0
        for name in names:
            with storage("set the next attempt time of", self.where(rel, name)):
                try:
                    os.utime(name, (when, when), dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not missing_ok:
                        raise
                    continue
            count += 1
        if count:
            with storage("set the next attempt time of", self.dir(rel)):
                os.utime(fd)
        return count

    def rename(self, src_rel: str, src: str, dst_rel: str, dst: str) -> None:
        """``rename(2)`` between two spool directories (replaces ``dst``)."""
        src_fd, dst_fd = self.fd(src_rel), self.fd(dst_rel)
        try:  # once per message: the paths of the error message only when needed
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as exc:
            where = f"{self.where(src_rel, src)} to {self.where(dst_rel, dst)}"
            raise StorageError.from_os_error(exc, "move", where) from exc

    def remove(self, rel: str, name: str) -> None:
        """Unlink ``name`` in ``rel``; nothing when it is not there."""
        with storage("remove", self.where(rel, name)), contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd(rel))

    def move_noreplace(self, src_rel: str, src: str, rel: str, name: str) -> str:
        """Move ``src`` into ``rel`` as ``name``, or a free variant; never overwrite.
        Returns the name it got.

        Into the top level (shared with producers) this is link + unlink, which
        fails instead of replacing a file a producer just dropped there.
        """
        src_fd, dst_fd = self.fd(src_rel), self.fd(rel)
        target = variant(name) if self.exists(rel, name) else name
        with storage("move", f"{self.where(src_rel, src)} to {self.where(rel, target)}"):
            try:
                os.link(src, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            except FileExistsError:
                target = variant(name)
                os.link(src, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                # no hard links on this file system (or a directory)
                os.rename(src, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                return target
            os.unlink(src, dir_fd=src_fd)
        return target


# pathlib's shortcut for a directory walk's names (Path._make_child_relpath, 3.8 to
# 3.12): ``directory / name`` without parsing ``name`` again, twice per message.
_CHILD = getattr(Path, "_make_child_relpath", None)


def child(directory: Path, name: str) -> Path:
    """``directory / name`` for a plain file name (one component, no "/")."""
    return _CHILD(directory, name) if _CHILD is not None else directory / name


def origin(kind: Kind) -> str:
    """The directory a message of ``kind`` is claimed from."""
    return "deferred" if kind == "deferred" else TOP


def refused(exc: OSError, what: str, path: object, dir_fd: int, name: str) -> StorageError:
    """SymlinkRefusedError when ``name`` (in ``dir_fd``) is a symlink, else the
    StorageError for ``exc``."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return SymlinkRefusedError(
                    f"{path} is a symbolic link; cxsmtp never works through one inside a"
                    " spool: replace it by a real directory (or remove it)",
                    errno=exc.errno,
                )
    return StorageError.from_os_error(exc, what, path)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def end_torn_line(fd: int) -> int:
    """The size of the line file open (for appending) on ``fd``, after ending its last
    line with a newline if it lacks one.  A SIGKILL can cut a write where the file
    crosses a page (the kernel stops between pages): ended here, such a torn line
    cannot swallow the next one appended, and readers skip it."""
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        write_all(fd, b"\n")
        size += 1
    return size


def _close_fds(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def same_file(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
    return f"{stem}~{os.urandom(4).hex()}{SUFFIX}"
