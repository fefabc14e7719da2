"""Durable file-system primitives shared by the recorder and the dataset tools.

Why a module of its own: every byte of a demonstration reaches the disk through these few functions, so the
crash-safety argument (write to a temporary name, ``fsync`` the file, rename, ``fsync`` the directory) lives in
one place, and one error type (``RecorderError``) reports every storage failure with the path and the errno.
"""

from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bus.cli import CommandError

TMP_SUFFIX = ".tmp"


class RecorderError(CommandError):
    """A storage failure (disk full, permission denied, I/O error) while recording or converting a dataset (exit 1
    on the command line, ``bus.cli``).

    Attributes:
        path: the file or directory that could not be written.
        errno: the OS error number (``errno.ENOSPC``, ``errno.EACCES``, ...), or ``None`` when not an OS error.
    """

    def __init__(self, action: str, path: str | os.PathLike[str], err: OSError | None = None, hint: str = "") -> None:
        self.path = str(path)
        self.errno = err.errno if err is not None else None
        code = errno_mod.errorcode.get(self.errno, "?") if self.errno is not None else None
        reason = f": [Errno {self.errno} {code}] {err.strerror}" if err is not None else ""
        super().__init__(f"could not {action} {self.path}{reason}{'; ' + hint if hint else ''}")


def hint_for(err: OSError) -> str:
    """One line an operator can act on, for the errors that happen in practice."""
    if err.errno == errno_mod.ENOSPC:
        return "disk full: free space; samples stay buffered in memory and the next flush retries"
    if err.errno in (errno_mod.EACCES, errno_mod.EPERM, errno_mod.EROFS):
        return "no write permission on the dataset directory"
    return ""


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is out (a regular-file write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_file_durably(path: Path, data: bytes | memoryview) -> str:
    """Write ``data`` to ``path`` so that after a crash ``path`` is either absent or complete; returns sha256 hex.

    The bytes go to ``path.tmp``, are fsynced, then renamed over ``path``. The caller fsyncs the directory
    (once per batch of files) to make the rename itself durable. On error the temporary file is removed and
    the ``OSError`` propagates unchanged.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make creations, renames and deletions inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_dir(out: Path, what: str, tag: str) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``out`` (yielded), then fsync and rename it to ``out``:
    readers see all of it or nothing. On any error the temporary directory is removed; an ``OSError`` becomes a
    ``RecorderError`` for ``what`` (e.g. "write training set") with a hint."""
    tmp = out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_dir(tmp)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecorderError(what, getattr(e, "filename", None) or tmp, e, hint_for(e)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Checksum of a file on disk, read in blocks so large chunks do not double memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
