"""What is wrong with a path a user named, in words, for the one-line errors: a folder where a
file was meant, a FIFO, a device, a symbolic link loop, a full disk."""

from __future__ import annotations

import errno
import os
import stat

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))
_SAID = {errno.ELOOP: "is a symbolic link loop",
         errno.ENOTDIR: "has a part that is not a folder",
         errno.EACCES: "is not accessible (permission denied)",
         errno.EPERM: "is not accessible (operation not permitted)",
         errno.ENAMETOOLONG: "is too long a name",
         errno.ENOSPC: "cannot be written: the disk is full",
         errno.EDQUOT: "cannot be written: the disk quota is exceeded",
         errno.EROFS: "is on a read-only file system",
         errno.EISDIR: "is a folder, not a file",
         errno.ENOENT: "does not exist"}


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be read or replaced as a regular file ("is a folder, not a file", ...);
    None when it is one, or when nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return None
    except OSError as err:
        return os_problem(err)
    for test, kind in _KINDS:
        if test(mode):
            return f"is {kind}, not a file"
    return None


def not_a_folder(path: str | os.PathLike) -> str | None:
    """Why `path` cannot hold files (a file, a loop, ...); None when it is a folder, or when
    nothing is there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return not_a_file(path)
    except OSError as err:
        return os_problem(err)
    return None if stat.S_ISDIR(mode) else "is not a folder"


def os_problem(err: OSError) -> str:
    """The operating system's error on a path, as what is wrong with the path."""
    return _SAID.get(err.errno) or f"cannot be used ({err.strerror or err})"
