"""Atomic output: stage beside the destination, verify, then rename; a kill at any moment loses nothing.

Every write stages in a private folder beside the destination, ``.NAME.PID.RANDOM.partial/``:

- ``new``: what the writer writes (a file, or an Orbax folder); the libraries' own temporaries
  (safetensors' ``.tmpXXXX``, Orbax's ``*.orbax-checkpoint-tmp-*``) land in the staging folder too;
- ``old``: an existing folder destination, moved aside while the new one is moved in.

The body of ``atomic_output`` writes *and verifies* (reads back, checks equivalence); only when it
returns is the destination replaced: a file with one ``os.replace``, a folder with two renames
(DST -> ``old``, ``new`` -> DST). Killed at any moment, DST is the old checkpoint or the new one, or
(between the two renames of a folder) missing with the old one complete in ``old``: the next write to
the same destination puts it back, removes what a killed run left, and says so (``LeftoverWarning``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .._errors import DestinationError, LeftoverWarning, OutputExistsError, OutputRefusedError

#: names of the moments a test may kill the process at (``FLAX2TORCH_TEST_KILL_AT``)
STAGES = ("staged", "written", "verified", "aside", "replaced")
_KILL_VARIABLE = "FLAX2TORCH_TEST_KILL_AT"
_MAX_NAME_BYTES = 255
_PREFIX_NAME_BYTES = 100  # longer destination names are shortened (plus a hash) in the staging name


def stage(name: str) -> None:
    """A named moment of a write; ``FLAX2TORCH_TEST_KILL_AT=name`` SIGKILLs the process there (tests only)."""
    if os.environ.get(_KILL_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def staging_prefix(destination: str | Path) -> str:
    """The start of every staging name of ``destination``: ``.NAME.``, a long NAME shortened with a hash."""
    name = Path(destination).name
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > _PREFIX_NAME_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:12]
        name = encoded[: _PREFIX_NAME_BYTES - 13].decode("utf-8", "ignore") + "~" + digest
    return f".{name}."


@contextlib.contextmanager
def atomic_output(
    destination: str | Path,
    *,
    force: bool = False,
    directory: bool = False,
    may_replace: Callable[[Path], None] | None = None,
    protect: Sequence[str | Path] = (),
) -> Iterator[Path]:
    """Yield a path to write (and verify) in a staging folder beside ``destination``; move it onto
    ``destination`` when the body returns. On any exception nothing is left behind and ``destination``
    is as it was.

    Arguments:
        directory: the output is a folder (Orbax): replaced by rename-aside-then-rename.
        may_replace: called with an existing ``destination`` when ``force`` is true; raises when that
            file or folder is not a checkpoint it may replace. A symbolic link is replaced itself (what
            it points to is never touched), so it is not asked.
        protect: paths (the source) that ``destination`` must be neither of nor a folder above.

    Raises:
        OutputExistsError: ``destination`` exists (a dangling link too) and ``force`` is false.
        OutputRefusedError: ``destination`` is the current folder, a folder above it or above a
            protected path, or (``force``) something ``may_replace`` refuses.
        DestinationError: the folder is missing or not writable, the name too long, or DST not replaceable.
    """
    target = Path(destination)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise DestinationError(f"{target}: the folder {parent} does not exist; create it first")
    _require_name_fits(target, parent)
    _refuse_protected(target, protect)
    clean_leftovers(target)
    if os.path.lexists(target):
        if not force:
            raise OutputExistsError(f"{target}: already exists; pass --force (force=True) to overwrite it")
        if not target.is_symlink() and may_replace is not None:
            may_replace(target)
        if directory and not target.is_symlink() and not target.is_dir():
            raise OutputRefusedError(
                f"{target}: is a file, the output is an Orbax folder; remove it or pick another name"
            )
        if not directory and target.is_dir() and not target.is_symlink():
            raise OutputRefusedError(f"{target}: is a folder, the output is a file; pick another name")
    staging = _make_staging(target, parent)
    new = staging / "new"
    try:
        stage("staged")
        yield new
        stage("verified")
        try:
            _commit(target, staging, new, directory)
        except OSError as e:  # a folder that lets us create files but not replace this one, ...
            raise DestinationError(f"{target}: cannot replace it ({e.strerror}); the old one is kept") from None
    except BaseException:
        old = staging / "old"
        if os.path.lexists(old) and not os.path.lexists(target):  # interrupted between the two renames
            os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _refuse_protected(target: Path, protect: Sequence[str | Path]) -> None:
    lexical = Path(os.path.abspath(target))
    candidates = {lexical} if target.is_symlink() else {lexical, target.resolve()}
    cwd = Path.cwd()
    for place in candidates:
        if place == cwd or place in cwd.parents:
            raise OutputRefusedError(
                f"{target}: is the current folder or a folder above it; name a new checkpoint folder instead"
            )
        for path in protect:
            for source in {Path(os.path.abspath(path)), Path(path).resolve()}:
                if place == source or place in source.parents:
                    raise OutputRefusedError(
                        f"{target}: is the source {path} or a folder above it; name another destination"
                    )


def _require_name_fits(target: Path, parent: Path) -> None:
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = _MAX_NAME_BYTES
    length = len(target.name.encode("utf-8", "surrogateescape"))
    if length > limit:
        raise DestinationError(f"{target}: the name is {length} bytes long; the file system allows {limit}: shorten it")


def _make_staging(target: Path, parent: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f"{staging_prefix(target)}{os.getpid()}.", suffix=".partial", dir=parent))
    except PermissionError:
        raise DestinationError(
            f"{target}: cannot write in the folder {parent} (permission denied); choose a writable destination"
        ) from None
    except OSError as e:
        if e.errno == errno.EROFS:
            raise DestinationError(f"{target}: the folder {parent} is on a read-only file system") from None
        raise DestinationError(f"{target}: cannot create a temporary beside it ({e.strerror})") from None


def _commit(target: Path, staging: Path, new: Path, directory: bool) -> None:
    if not os.path.lexists(new):
        raise RuntimeError(f"{target}: the writer produced nothing")  # a bug of ours: exit 3, not a user error
    if not directory:
        os.chmod(new, _file_mode(target))
        os.replace(new, target)
        stage("replaced")
        return
    _follow_umask(new)
    if os.path.lexists(target):
        os.rename(target, staging / "old")
        stage("aside")
    os.rename(new, target)
    stage("replaced")


def _follow_umask(folder: Path) -> None:
    """Give every regular file written in a new output folder what the umask leaves of 0666 (a writer that
    goes through a private temporary, as safetensors does, leaves 0600 where ``open`` would give 0644)."""
    mode = _new_file_mode()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, mode)


def _file_mode(target: Path) -> int:
    """The mode of the replaced regular file, else what the umask leaves of 0666."""
    try:
        info = os.lstat(target)
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    except OSError:
        pass
    return _new_file_mode()


def _new_file_mode() -> int:
    """What the umask leaves of 0666: the mode ``open`` gives a new file."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (briefly)
    os.umask(mask)
    return mask


def clean_leftovers(destination: str | Path) -> list[str]:
    """Remove what killed writes to ``destination`` left beside it (staging folders of processes that
    are gone); when DST is missing and a complete old folder was left aside, put it back first.

    Returns the names removed or restored; a ``LeftoverWarning`` says so.
    """
    target = Path(destination)
    parent = target.parent if str(target.parent) else Path(".")
    prefix = staging_prefix(target)
    try:
        names = sorted(n for n in os.listdir(parent) if n.startswith(prefix) and n.endswith(".partial"))
    except OSError:
        return []
    done: list[str] = []
    for name in names:
        pid_text = name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        leftover = parent / name
        old = leftover / "old"
        if leftover.is_dir() and not leftover.is_symlink() and os.path.lexists(old) and not os.path.lexists(target):
            os.rename(old, target)
            done.append(f"put back {target} from {name}")
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        done.append(f"removed {name}")
    if done:
        warnings.warn(
            f"{target}: an interrupted earlier run left temporaries: " + "; ".join(done), LeftoverWarning, stacklevel=2
        )
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another write of this process (a thread) may be under way
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
