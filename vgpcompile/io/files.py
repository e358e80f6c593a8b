"""Writing outputs safely: check the path before any work, stage beside it, publish by rename.

Every output (a checkpoint directory, an ONNX file) is first written into a staging
directory next to its final path, named ``.NAME.vgp-PID-RANDOM`` and created with mode
0777 & ~umask (never mkdtemp's 0700), so published files and directories get the modes
any other tool would give them. It is then published by rename(2), which is atomic:

- a file with ``os.replace``;
- a checkpoint directory that does not exist yet with one ``rename``; one that exists is
  swapped with the staged one in a single ``renameat2(RENAME_EXCHANGE)`` call (Linux), so
  the path names the whole old checkpoint or the whole new one, at every instant, whatever
  kills the process. Where the kernel or filesystem lacks RENAME_EXCHANGE (other systems),
  the old directory is renamed aside and the new one into place: two renames, between which
  the path is briefly absent, never half old and half new.

A staging directory left by a killed process holds either the new output that was never
published or the old one that was swapped out; the next write to the same path removes
those whose process is gone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def output_path(path: object, flag: str, kind: str) -> Path:
    """``path`` as a Path, or a UsageError (exit 2) naming ``flag`` when it cannot be an output.

    ``kind`` is "file" or "dir". Checked before any work: an empty path, a directory where a
    file is wanted (or the reverse), a parent that is a file, a parent that cannot be written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"{flag} must be a path (str or os.PathLike), got {type(path).__name__}")
    if not str(path).strip():
        raise UsageError(f"{flag}: the output path is empty")
    target = Path(path)
    if kind == "file" and (target.is_dir() or str(path).endswith(("/", os.sep))):
        raise UsageError(f"{flag} {str(path)!r} is a directory; give a file name, e.g. {str(target / 'model.onnx')!r}")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {str(path)!r} exists and is not a directory")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: cannot write in {str(parent)!r} (permission denied)")
    return target


def check_replaceable(target: Path, flag: str, allowed: Iterable[str], what: str) -> None:
    """Refuse to replace a directory holding anything but ``allowed`` files (``what``: "a
    checkpoint", "a diagnose report"): everything in it would be deleted by the swap."""
    if not target.is_dir():
        return
    allowed = set(allowed)
    others = sorted(p.name for p in target.iterdir() if p.name not in allowed)
    if others:
        shown = ", ".join(others[:3]) + (f" (+{len(others) - 3} more)" if len(others) > 3 else "")
        raise UsageError(
            f"{flag} {str(target)!r} is a directory that holds other files than {what} ({shown}); "
            f"{what} directory is replaced whole, so choose a new or empty directory"
        )


def stage_for(target: Path) -> Path:
    """A new empty staging directory beside ``target`` (its parents created), mode 0777 & ~umask."""
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        while True:
            stage = parent / f".{target.name}.vgp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.mkdir(stage, 0o777)
                return stage
            except FileExistsError:
                continue
    except OSError as err:
        raise UsageError(f"cannot write {str(target)!r}: {err.strerror or err} ({err.filename or parent})") from None


def remove_stale(target: Path) -> None:
    """Remove staging directories of ``target`` left by processes that no longer run."""
    parent = target.absolute().parent
    pattern = re.compile(re.escape(f".{target.name}.vgp-") + r"(\d+)-[0-9a-f]+(-old)?")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            remove(entry)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: never clean up on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove(path: Path) -> None:
    """Remove a file or a directory tree; nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def give_plain_mode(path: Path) -> None:
    """The mode a plainly created file gets (0666 & ~umask): writers such as safetensors and
    mkstemp create 0600 files, which other users of a shared checkpoint could not read."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def fsync(path: Path) -> None:
    """Flush ``path`` to disk, so the rename that publishes it cannot outrun its contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(staged: Path, target: Path) -> None:
    os.replace(staged, target)


def publish_dir(stage: Path, target: Path) -> None:
    """Put directory ``stage`` at ``target`` in one step; the old ``target`` ends up at ``stage``."""
    if not target.exists():
        try:
            os.rename(stage, target)
            return
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise  # else another writer created it meanwhile: swap with it
    if _exchange(stage, target):
        return
    aside = stage.with_name(stage.name + "-old")
    os.rename(target, aside)
    os.rename(stage, target)
    os.rename(aside, stage)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
