"""Files that a crash or Ctrl-C must not leave half-written: write to a temporary file beside, then rename."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; when the block succeeds it replaces `path` in one rename, when it
    fails the temporary file is removed and `path` keeps its old content (or stays absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def check_writable_folder(path: str | os.PathLike, option: str = "--output-dir") -> Path:
    """Create `path` and prove a file can be written there, before hours of work end in a PermissionError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check."):
            pass
    except OSError as error:
        raise ValueError(
            f"{option} {str(path)!r} is not a writable folder ({error.strerror}); choose another"
        ) from None
    return path


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""What peft writes for one adapter: an earlier adapter's copies are never carried into a new save (no mix)."""


def save_adapter_atomically(model: Any, directory: str | os.PathLike, **save_pretrained_kwargs: Any) -> Path:
    """`model.save_pretrained(directory, **save_pretrained_kwargs)` such that an interruption at any point (an
    exception, Ctrl-C, a killed process) leaves in `directory` the earlier adapter or the new one, each whole.

    Why: `save_pretrained` writes in place. A process killed while it writes `adapter_model.safetensors` leaves
    weights that do not load; one killed between the weights and `adapter_config.json` leaves the new weights under
    the old config.

    How: `save_pretrained` writes into a fresh folder beside `directory` (`.<name>.saving-<token>`, on the same file
    system), whose files are then synced to disk; then two renames swap it in: `directory` to `.<name>.old-<token>`,
    the new folder to `directory`; the old folder is deleted last. An interruption before the first rename leaves
    `directory` untouched; after the second, the new adapter is in place (at worst the old folder is left beside).
    Between the two renames (microseconds) `directory` does not exist, while both adapters lie whole beside it:
    the next call for the same `directory` first completes such a swap (the new folder is whole, since the old one
    is only moved aside after the new one was written and synced) and removes what interrupted calls left; by hand,
    rename `.<name>.saving-<token>` to `<name>`.

    Everything else in `directory` (a Trainer's checkpoints and logs, result.json, ...) is carried into the new
    folder as hard links (copies where the file system has none) before the swap, so that the swap replaces the
    adapter and not the folder; only the old adapter's own files (`ADAPTER_FILES`, and whatever the new save writes
    again, such as peft's README.md) are left behind. Files that another process adds to `directory` during the
    call can be lost: call it from one process at a time per folder (under DDP, from the main process only, as
    the recipes do).

    Returns `directory` as a Path.
    """
    target = Path(os.path.abspath(directory))
    if target.is_symlink():
        target = target.resolve()
    if Path.cwd().resolve().is_relative_to(target.resolve()):  # the swap would move the working folder away
        raise ValueError(f"cannot swap {str(target)!r}, which holds the working folder; save into a folder inside it")
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file, not a folder; choose a folder to save the adapter in")
    target.parent.mkdir(parents=True, exist_ok=True)
    finish_interrupted_save(target)
    prefix = f".{target.name}.saving-"
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    old = target.parent / f".{target.name}.old-{staging.name[len(prefix) :]}"
    try:
        model.save_pretrained(str(staging), **save_pretrained_kwargs)
        written = [path for path in staging.rglob("*") if path.is_file() and not path.is_symlink()]
        if not written:
            raise ValueError(
                f"save_pretrained wrote nothing (is_main_process={save_pretrained_kwargs.get('is_main_process')}?), "
                f"so {str(target)!r} was left as it was; call save_adapter_atomically on the main process only"
            )
        for path in written:
            _fsync(path)
        if target.is_dir():
            for entry in target.iterdir():
                carried = staging / entry.name
                if entry.name not in ADAPTER_FILES and not (carried.exists() or carried.is_symlink()):
                    _link_tree(entry, carried)
        for folder in {path.parent for path in written} | {staging}:
            _fsync(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except Exception:  # the rename itself failed (not a kill): the old adapter goes back in place
            os.rename(old, target)
            raise
        _fsync(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
        _fsync(target.parent)
    return target


def finish_interrupted_save(directory: str | os.PathLike) -> None:
    """Clean up after `save_adapter_atomically` calls for `directory` that were interrupted: complete a swap that
    stopped between its two renames (`directory` absent, `.<name>.old-<token>` present: the new folder
    `.<name>.saving-<token>` is whole, or, if it is gone, put the old one back), then delete what is left beside
    `directory` (unfinished new folders, old folders whose deletion was cut short)."""
    target = Path(directory)
    pattern = f".{glob.escape(target.name)}"
    olds = sorted(target.parent.glob(f"{pattern}.old-*"))
    if olds and not (target.exists() or target.is_symlink()):
        token = olds[-1].name.rsplit(".old-", 1)[1]
        new = target.parent / f".{target.name}.saving-{token}"
        os.rename(new if new.is_dir() else olds[-1], target)
        _fsync(target.parent)
    for leftover in [*target.parent.glob(f"{pattern}.saving-*"), *target.parent.glob(f"{pattern}.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _link_tree(source: Path, destination: Path) -> None:
    """`source` (a file, folder or symlink) at `destination` without copying data where hard links exist."""
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        shutil.copytree(source, destination, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, destination)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (folders: best effort, not every OS opens them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
