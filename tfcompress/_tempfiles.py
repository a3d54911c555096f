"""Temporary files and directories that a killed process does not leave behind for good.

Every temporary name carries the host and process id of its owner
(`<prefix><host>-<pid>-<random>`). A failure inside the process removes its
own files (`finally`); a process killed outright (SIGKILL, OOM) cannot, so the
next `sweep` of that location removes the entries of owners that are no
longer running on this host. Entries of live processes and of other hosts
(a shared network directory) are never touched.
"""

import contextlib
import os
import re
import shutil
import socket
import tempfile

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _owner_prefix(prefix):
    return f"{prefix}{_HOST}-{os.getpid()}-"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep(directory, prefix):
    """Removes `prefix` entries in `directory` left by dead processes of this host.

    Returns the paths removed. Errors (a file removed meanwhile, no permission)
    are ignored: sweeping is best effort and never fails the caller.
    """
    pattern = re.compile(re.escape(prefix) + re.escape(_HOST) + r"-(\d+)-[^-]*$")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match or _alive(int(match.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def temporary_directory(prefix):
    """A fresh directory under the system temp directory, removed on exit.

    Stale directories of the same `prefix` left by killed processes are swept first.
    """
    sweep(tempfile.gettempdir(), prefix)
    with tempfile.TemporaryDirectory(prefix=_owner_prefix(prefix)) as path:
        yield path


def mkstemp(directory, prefix, suffix=""):
    """`tempfile.mkstemp` in `directory` with an owner-tagged name, after a sweep."""
    sweep(directory, prefix)
    return tempfile.mkstemp(dir=directory, prefix=_owner_prefix(prefix), suffix=suffix)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, data):
    """Writes bytes to `path` through a temporary file and a rename.

    A failure at any point leaves no file at `path` (and no temporary file);
    the temporary file of a process killed outright is removed by the next
    write into the same directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = mkstemp(directory, ".tmp-", suffix=".tflite")
    try:
        # mkstemp creates the file owner-only (0o600); give it the mode `open` would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
