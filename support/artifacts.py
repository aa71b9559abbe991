"""Artifacts on disk: atomic writes, run keys, and safe loading.

Every file the kit writes goes through :func:`atomic_write`: the bytes land in
a temporary file in the same folder, are flushed to disk, and are renamed over
the target in one step. A crash, a kill or a full disk therefore leaves either
the old file or the new one, never half of one; a failed write removes its
temporary file and re-raises with the path named.

Checkpoints are loaded only with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

#: Bumped when the run-folder layout changes; older folders are reported, not mixed in.
RUN_FORMAT_VERSION = 1


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (read once, on first write, not at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ArtifactError(RuntimeError):
    """A file on disk is missing, truncated, foreign or from an older format."""


def _jsonable(value: Any) -> Any:
    """Turn numpy / torch / Path values into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # torch.Tensor
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN -> null keeps JSON strict
        return None
    return value


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"))


def config_key(obj: Any, length: int = 12) -> str:
    """Short SHA-256 of the canonical JSON of ``obj`` (a run or cache key)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write a file atomically: ``write(fileobj)`` fills a temp file that replaces ``path``.

    On any error (``OSError(ENOSPC)`` included) the temporary file is removed,
    the previous ``path`` is left untouched, and the error names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"no space left while writing {path}; the previous version (if any) is intact. "
                "Free disk space or move LOSSBENCH_RUNS_DIR / LOSSBENCH_DATA_DIR, then re-run",
            ) from exc
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path) -> Any:
    """Read JSON, with an :class:`ArtifactError` naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc}); delete the run folder or re-run with force=True"
        ) from None


def write_npz(path, **arrays) -> Path:
    """Save arrays as an uncompressed ``.npz`` (fast to load) atomically."""
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def read_npz(path) -> dict:
    """Load every array of an ``.npz`` into memory (``allow_pickle=False``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(
            f"{path} is truncated or not an .npz file ({exc}); delete it or re-run with force=True"
        ) from None


def save_state(path, state: Mapping[str, Any]) -> Path:
    """Save a checkpoint (tensors, numbers, strings, nested dicts) atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return write_bytes(path, buffer.getvalue())


def load_state(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True``; a bad file raises :class:`ArtifactError`.

    ``mmap=True`` maps the tensors instead of reading them: a cheap way to check
    that a large checkpoint is complete and safe without loading its weights.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"checkpoint {path} does not exist; check the path (nothing is downloaded: "
                            "weights must be a local file written by torch.save)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, pickle with foreign globals, ...
        raise ArtifactError(
            f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: {str(exc)[:200]}); "
            "it is truncated or not a lossbench state dict. Delete it or re-run with force=True"
        ) from None
    if not isinstance(state, dict):
        raise ArtifactError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
