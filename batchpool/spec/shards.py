"""Task groups generated from inputs: one task per file, or per row range of an array.

``shards = { glob = "data/*.csv" }`` (or ``files = [...]``) gives one task per file;
``shards = { npy = "big.npy", count = 16 }`` one task per contiguous block of rows, as
even as possible (the first ``rows % count`` blocks have one row more). Each task gets
only its own shard, staged into its attempt directory as ``{shard_path}``.

The loader resolves globs once (the matched files are stored with the job, so a resume
sees the same shards); a row block is written to its own .npy file the first time a
task needs it, under ``$BATCHPOOL_HOME/shards/``, keyed by the array file's identity.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from batchpool import paths


def match_files(base_dir: str, pattern: str) -> list[str]:
    """Sorted absolute paths of the regular files `pattern` matches under `base_dir`."""
    full = os.path.join(base_dir, os.path.expanduser(pattern))
    return sorted(os.path.normpath(p) for p in glob.glob(full, recursive=True)
                  if os.path.isfile(p))


def npy_rows(path: str) -> int:
    """How many rows (first-axis entries) the .npy file holds; reads only its header."""
    import numpy as np  # here: numpy costs a CLI start-up 0.1 s, and few specs shard

    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim == 0:
        raise ValueError("it holds a scalar, not an array with rows")
    return int(array.shape[0])


def row_range(rows: int, count: int, position: int) -> tuple[int, int]:
    """[start, stop) of block `position` when `rows` are cut into `count` blocks."""
    size, extra = divmod(rows, count)
    start = position * size + min(position, extra)
    return start, start + size + (1 if position < extra else 0)


def block_file(npy: str, count: int, position: int) -> Path:
    """The .npy file of row block `position` of `npy` cut in `count`, written if missing."""
    stat = os.stat(npy)
    identity = f"{os.path.abspath(npy)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{count}"
    directory = paths.home() / "shards" / hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = directory / f"{Path(npy).stem}-{position:05d}.npy"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    import numpy as np

    array = np.load(npy, mmap_mode="r", allow_pickle=False)
    start, stop = row_range(int(array.shape[0]), count, position)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    with open(partial, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array[start:stop]))
    os.replace(partial, target)  # published whole: a crash never leaves half a block
    return target
