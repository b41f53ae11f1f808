"""Atomic publishing of a dataset folder under ``$MINARI_DATASETS_PATH``: collection writes into a hidden
temporary root (``<root>/.lede-partial-<host>-<pid>-<hex>``, same file system, invisible to ``minari list``) and
the finished dataset is moved into place with one ``os.rename``; temporary folders of this machine's dead
processes are removed by the next collection (`clean_stale`). So a dataset id holds the complete dataset or
nothing, and the final rename never replaces what appeared under the id meanwhile."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

__all__ = ["check_writable", "datasets_root", "datasets_path", "temp_name", "clean_stale", "publish",
           "PARTIAL_PREFIX", "TRASH_PREFIX", "OLD_PREFIX"]

PARTIAL_PREFIX = ".lede-partial-"     # a collection being written (removed by clean_stale once its process is gone)
TRASH_PREFIX = ".lede-trash-"         # a replaced dataset being deleted (removed by clean_stale likewise)
OLD_PREFIX = ".lede-old-"             # a dataset moved aside while its replacement is renamed in: never removed


def datasets_root() -> Path:
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path()).resolve()


@contextmanager
def datasets_path(path: Path):
    """Point Minari at ``path`` for the duration (Minari reads ``MINARI_DATASETS_PATH`` at every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_name(prefix: str) -> str:
    """``<prefix><host>-<pid>-<random>``: whose it is, so that only this machine's dead ones are cleaned."""
    return f"{prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_stale(root: Path) -> None:
    """Remove temporary folders left by this machine's collections whose process is gone (killed, crashed): partial
    collections and replaced datasets being deleted, never a dataset moved aside (``OLD_PREFIX``)."""
    for d in root.iterdir() if root.is_dir() else ():
        for prefix in (PARTIAL_PREFIX, TRASH_PREFIX):
            if d.is_dir() and d.name.startswith(prefix):
                try:
                    host, pid, _ = d.name[len(prefix):].rsplit("-", 2)
                    pid = int(pid)
                except ValueError:
                    continue
                if host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(d, ignore_errors=True)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if nothing is at ``dst`` (``FileExistsError`` otherwise, even for an empty
    folder, which a plain rename would replace). Atomic on Linux (``renameat2`` with ``RENAME_NOREPLACE``); where
    that is unavailable, a check and a rename: a folder appearing between the two is still refused when it holds
    anything (``ENOTEMPTY``), only an empty one would be replaced."""
    libc = _libc()
    if libc is not None:
        if libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):    # unsupported here: fall back
            raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    os.rename(src, dst)


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
_LIBC: list = []


def _libc():
    """The C library's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not _LIBC:
        found = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(None, use_errno=True)
                lib.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                found = lib
            except (OSError, AttributeError):
                pass
        _LIBC.append(found)
    return _LIBC[0]


_TAKEN = (errno.EEXIST, errno.ENOTEMPTY)


def publish(src: Path, root: Path, dataset_id: str, overwrite: bool, namespace_description: str) -> Path:
    """Move the finished dataset folder ``src`` to ``root/dataset_id`` with one rename, never over something that
    appeared there during the collection (``FileExistsError`` naming the id and that folder); with ``overwrite``,
    the existing dataset is first moved aside (to ``<root>/.lede-old-...``, which `clean_stale` never removes) and
    moved back if the rename fails; if that fails too, the error says where the old dataset is."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import create_namespace, list_local_namespaces

    dst = root / dataset_id
    namespace = parse_dataset_id(dataset_id)[0]
    with datasets_path(root):
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace, description=namespace_description)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def appeared() -> FileExistsError:
        return FileExistsError(f"A dataset {dataset_id} appeared at {dst} while collecting; nothing was replaced "
                               "(pass overwrite=True / --overwrite to replace it).")

    old = None
    if overwrite:
        old = root / temp_name(OLD_PREFIX)
        try:
            os.rename(dst, old)
        except FileNotFoundError:
            old = None                        # nothing to replace (any more)
        except OSError as e:
            raise type(e)(e.errno, f"Cannot replace the dataset {dataset_id} at {dst}: {e.strerror or e}") from None
    try:
        _rename_noreplace(src, dst)
    except BaseException as e:
        if old is not None:
            try:
                _rename_noreplace(old, dst)
            except OSError:
                err = FileExistsError(f"A dataset {dataset_id} appeared at {dst} while publishing; nothing was "
                                      f"stored there, and the dataset it was to replace was kept at {old} (move it "
                                      f"back with: rm -r {dst} && mv {old} {dst}).")
                err.old_data = old
                raise err from None
        if isinstance(e, OSError) and e.errno in _TAKEN:
            raise appeared() from None
        raise
    if old is not None:
        trash = root / temp_name(TRASH_PREFIX)
        try:
            os.rename(old, trash)         # from now on a crash leaves a folder that clean_stale removes
        except OSError:
            trash = old
        shutil.rmtree(trash, ignore_errors=True)
    return dst


def check_writable(dataset_id: str, overwrite: bool = False) -> Path:
    """The folder the dataset ``dataset_id`` goes to; ``FileExistsError`` if it exists and not ``overwrite``."""
    final = datasets_root() / dataset_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"The dataset {dataset_id} already exists at {final}: pass overwrite=True "
                              "(lede collect --overwrite) to replace it, or bump the recipe's version.")
    return final
