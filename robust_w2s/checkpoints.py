"""Checkpoint folders that plain open_clip loads: ``open_clip_model.safetensors`` plus
``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``), written atomically."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import DISK_FULL, UserError

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then rename over ``path`` (and fsync
    the folder, so the rename survives a power cut too).

    Raises OSError(ENOSPC or EDQUOT, filename=path) when the disk is full; ``path`` is then untouched.
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    try:
        with open(staging, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException as error:
        staging.unlink(missing_ok=True)
        _raise_if_disk_full(error, path)
        raise
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``path``, fsynced, so that at every instant
    ``path`` holds the old or the new complete folder, whenever the process is killed.

    The swap is one atomic exchange of the two folders (Linux ``renameat2(RENAME_EXCHANGE)``). Where
    the platform or file system lacks it (NFS, macOS), the old folder is renamed to ``.NAME.old``
    and the new one into place: a kill between the two renames leaves only ``.NAME.old``, which the
    next call (or :func:`recover_folder`) puts back. Staging folders left by killed writers are
    removed first; on error, this call's staging folder is removed. A full disk, however the writer
    reports it, is raised as OSError(ENOSPC or EDQUOT, filename=path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    _remove_dead_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-{os.getpid()}-", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is shared like any folder
    try:
        yield staging
        for folder, _, files in os.walk(staging):
            for name in files:
                _fsync(Path(folder) / name)
            _fsync(folder)
        if path.exists() and _exchange(staging, path):
            _fsync(path.parent)
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        previous = _previous(path)
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(path, previous)
        os.replace(staging, path)
        _fsync(path.parent)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        _raise_if_disk_full(error, path)
        raise


def recover_folder(path: str | os.PathLike) -> None:
    """Put back the complete old folder that :func:`atomic_folder` moved aside, if a kill left
    ``path`` missing between its two renames (only where the atomic exchange is unavailable)."""
    path = Path(path)
    if not path.exists() and _previous(path).is_dir():
        os.replace(_previous(path), path)


def _previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _remove_dead_staging(path: Path) -> None:
    """Remove the staging folders of ``path`` left by killed writers: those whose process no longer
    runs on this machine, and this process's own (a pid reused after a kill; one process writes a
    folder at a time)."""
    for staging in path.parent.glob(f".{path.name}.staging-*"):
        pid = staging.name.removeprefix(f".{path.name}.staging-").split("-")[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)


def _running(pid: int) -> bool:
    if os.name != "posix":
        return True  # no signal-free probe elsewhere: keep the folder
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except AttributeError:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # a file system without it
        return False
    raise OSError(error, os.strerror(error), str(a), None, str(b))


def _fsync(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_if_disk_full(error: BaseException, path: Path) -> None:
    """Raise OSError(code, strerror, path) if ``error`` is a full disk (or quota), else return.

    Writers report a full disk in their own ways (measured on a full tmpfs): Python's files raise
    OSError(ENOSPC); safetensors raises SafetensorError("... No space left on device (os error 28)");
    torch.save raises RuntimeError("unexpected pos ...") with the OSError only as its context, and
    only when it writes through a Python file object (given a path, it keeps no errno at all).
    """
    seen, cause = set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = cause.errno if isinstance(cause, OSError) else None
        rust = re.search(r"\(os error (\d+)\)", str(cause))
        code = code if code in DISK_FULL else int(rust.group(1)) if rust else None
        if code in DISK_FULL:
            raise OSError(code, os.strerror(code), str(path)) from error
        cause = cause.__cause__ or cause.__context__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


LOCK_FILE = ".lock"
ORPHAN_GRACE_SECONDS = 30  # how long a dead holder's orphaned workers may keep the lock


@contextlib.contextmanager
def exclusive_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on folder ``path`` (created if missing) while the block runs: a
    ``flock`` on ``PATH/.lock``, which the system releases when the process ends, however it ends
    (a SIGKILLed run leaves no stale lock). The file holds the holder's pid, for the message.

    Raises UserError, naming the folder and the pid holding it, when another process holds it, or
    when ``path`` is a file.
    """
    import fcntl  # POSIX only; imported here so that the module loads everywhere

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder")
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        # A killed run's forked children (DataLoader workers) inherit the lock and keep it until they
        # notice their parent died (seconds): while the recorded holder is dead, wait for them.
        deadline = time.monotonic() + ORPHAN_GRACE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                if holder.isdigit() and not _running(int(holder)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
                raise UserError(f"{path} is in use by another run (pid {holder} holds {path / LOCK_FILE})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def save_checkpoint(model: nn.Module, path: str | os.PathLike, model_cfg: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write ``model`` as a checkpoint folder at ``path``, replacing any folder there atomically.

    ``model_cfg`` defaults to the config the model was created from (``model.rw2s_model_cfg``,
    set by :func:`robust_w2s.load_model`, QuickGELU flag included); the preprocessing is the
    model's own (its tag's mean, std, resize mode and interpolation), so plain open_clip's
    ``local-dir:`` builds the same network. ``extra`` is stored beside it in the config JSON under
    ``robust_w2s`` (e.g. how the model was trained), with the model's ``lineage`` (the pretrained
    tag its weights descend from) if it has one. Returns the folder path.
    """
    path = Path(path)
    model_cfg = model_cfg or getattr(model, "rw2s_model_cfg", None)
    if model_cfg is None:
        raise ValueError("save_checkpoint needs the model's open_clip config (model_cfg=...)")
    lineage = getattr(model, "rw2s_lineage", None)
    if lineage:
        extra = {"lineage": lineage, **(extra or {})}
    with atomic_folder(path) as staging:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        config = {"model_cfg": model_cfg, "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}
        if extra:
            config["robust_w2s"] = extra
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return path


# The weight files of an open_clip local-dir folder, in open_clip's order of preference: ours, then
# what `huggingface-cli download --local-dir` leaves of a hub release.
WEIGHT_FILES = (WEIGHTS_FILE, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin")


def weights_file(path: str | os.PathLike) -> Path | None:
    """The weight file of a checkpoint folder (see ``WEIGHT_FILES``), or None."""
    return next((Path(path) / name for name in WEIGHT_FILES if (Path(path) / name).is_file()), None)


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The parsed ``open_clip_config.json`` of a checkpoint folder, with one-line errors."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not path.is_dir():
        raise UserError(f"checkpoint folder not found: {path}")
    if not config_file.is_file() or weights_file(path) is None:
        raise UserError(f"{path} is not a checkpoint folder (needs {CONFIG_FILE} and a weight file: "
                        f"{', '.join(WEIGHT_FILES[:3])}, ...)")
    try:
        config = json.loads(config_file.read_text())
        config["model_cfg"]["vision_cfg"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{config_file}: not a valid open_clip config ({error!r})") from None
    return config


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model``; a mismatched architecture is a one-line error."""
    path = Path(path)
    try:
        state = load_file(path)
    except Exception as error:  # safetensors raises several types for truncated/corrupt files
        raise UserError(f"{path}: unreadable safetensors file ({error})") from None
    check_state_dict(model, state, source=str(path))
    with torch.no_grad():
        model.load_state_dict(state)


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line UserError unless ``state`` has exactly ``module``'s keys and shapes.

    The message counts missing, unexpected and mis-shaped tensors and names the first, with both
    shapes when mis-shaped (e.g. weights of ViT-L-14 loaded as ViT-B-32).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if not (missing or unexpected or mismatched):
        return
    if mismatched:
        key = mismatched[0]
        first = f"{key}: {tuple(state[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
    else:
        first = f"{(missing or unexpected)[0]} {'missing' if missing else 'unexpected'}"
    raise UserError(f"{source} does not match the model's architecture: {len(missing)} missing, "
                    f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors (first: {first})")
