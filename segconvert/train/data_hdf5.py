"""Caffe data layers for training: ``HDF5Data`` (file list, batch_size, shuffle) and ``Input`` (fed by the caller).

:class:`HDF5DataSource` follows ``HDF5DataLayer``: the ``source`` list names HDF5 files (whitespace-separated);
each file's datasets named like the layer's tops are read whole; rows are taken in order (``shuffle``: the file
order is shuffled at each wrap and the rows of each file when it is loaded, from a seeded numpy generator, as
Caffe shuffles with its own RNG); a batch that runs past a file continues in the next one, wrapping around.
Paths are resolved as Caffe resolves them (the working directory), then relative to the list file, then to
the prototxt. :meth:`~HDF5DataSource.state_dict` holds the position and permutations, so a resumed run reads
the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import DatasetError

__all__ = ["HDF5DataSource", "InputSource", "resolve_data_path"]


def resolve_data_path(name: str, *bases: Path | None) -> Path | None:
    """``name`` as Caffe opens it (cwd), else relative to each base in turn; None when none exists."""
    p = Path(name)
    if p.exists():
        return p
    if not p.is_absolute():
        for base in bases:
            if base is not None and (base / p).exists():
                return base / p
    return None


class HDF5DataSource:
    """Batches of an ``HDF5Data`` layer: ``next_batch()`` -> ``{top: float32 array [batch_size, ...]}``."""

    def __init__(
        self,
        source: str,
        tops: list[str],
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        prototxt: Path | None = None,
        layer: str | None = None,
        line: int | None = None,
    ) -> None:
        import h5py  # noqa: F401  (fail early with the import error)

        self.tops, self.batch_size, self.shuffle = list(tops), int(batch_size), bool(shuffle)
        where = {"file": prototxt, "line": line, "layer": layer}
        proto_dir = prototxt.parent if prototxt is not None else None
        listing = resolve_data_path(source, proto_dir)
        if listing is None:
            raise DatasetError(f"HDF5Data source list {source!r} not found", **where)
        self.list_path = listing
        names = listing.read_text(encoding="utf-8").split()
        if not names:
            raise DatasetError(f"HDF5Data source list {listing} names no files", **where)
        self.files: list[Path] = []
        for n in names:
            path = resolve_data_path(n, listing.parent, proto_dir)
            if path is None:
                raise DatasetError(f"HDF5 file {n!r} (listed in {listing}) not found", **where)
            self.files.append(path)
        if self.batch_size < 1:
            raise DatasetError("HDF5Data batch_size must be at least 1", **where)
        self._where = where
        self.rng = np.random.default_rng(seed)
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.file_pos = 0
        self.row = 0
        self._load()

    def _load(self) -> None:
        import h5py

        path = self.files[int(self.file_order[self.file_pos])]
        try:
            with h5py.File(path, "r") as fh:
                missing = [t for t in self.tops if t not in fh]
                if missing:
                    raise DatasetError(f"HDF5 file {path} lacks dataset(s) {missing}", **self._where)
                self.arrays = {t: np.asarray(fh[t], dtype=np.float32) for t in self.tops}
        except OSError as exc:
            raise DatasetError(f"cannot read HDF5 file {path}: {exc}", **self._where) from None
        rows = {len(a) for a in self.arrays.values()}
        if len(rows) != 1 or 0 in rows:
            raise DatasetError(f"HDF5 file {path}: datasets have row counts {sorted(rows)}", **self._where)
        self.rows = rows.pop()
        self.permutation = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.permutation)

    def top_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tops' shapes, ``(batch_size, *row shape)`` of the first file, as ``HDF5DataLayer`` reshapes them."""
        return {t: (self.batch_size, *self.arrays[t].shape[1:]) for t in self.tops}

    def next_batch(self) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {t: [] for t in self.tops}
        for _ in range(self.batch_size):
            r = int(self.permutation[self.row])
            for t in self.tops:
                out[t].append(self.arrays[t][r])
            self.row += 1
            if self.row == self.rows:
                self.row = 0
                self.file_pos += 1
                if self.file_pos == len(self.files):
                    self.file_pos = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_order)
                if len(self.files) > 1 or self.shuffle:
                    self._load()
        return {t: np.stack(v) for t, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        """The read position, the permutations and the shuffle RNG state (JSON-ready)."""
        return {
            "file_order": self.file_order.tolist(),
            "file_pos": self.file_pos,
            "row": self.row,
            "permutation": self.permutation.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.file_order = np.asarray(state["file_order"], dtype=np.int64)
        self.file_pos = int(state["file_pos"])
        self._load()
        self.permutation = np.asarray(state["permutation"], dtype=np.int64)
        self.row = int(state["row"])
        self.rng.bit_generator.state = state["rng"]


class InputSource:
    """Batches for a net whose data come from ``Input`` layers: wraps an iterable of ``{top: array}`` dicts.

    The position is the number of batches taken; a resumed source skips that many (the iterable must replay)."""

    def __init__(self, batches: Any) -> None:
        self._factory = batches if callable(batches) else None
        self._iter = iter(batches() if callable(batches) else batches)
        self.taken = 0

    def next_batch(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iter)
        except StopIteration:
            raise DatasetError(f"the Input batches ran out after {self.taken} batches") from None
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._factory is not None:
            self._iter = iter(self._factory())
            self.taken = 0
        for _ in range(int(state["taken"]) - self.taken):
            self.next_batch()
