"""Crystal graphs and text embeddings as flat arrays, back to back: the form in which they are stored, memory-mapped
and shared by every process on a node, and assembled into batches.

``GraphArrays`` holds n crystal graphs and their line graphs; ``TextArrays`` holds n descriptions' vectors. Both
are plain dicts of numpy arrays with offsets, so a folder of ``.npy`` files opens with ``mmap_mode="r"`` in
milliseconds whatever its size, and the operating system keeps one copy in memory for all readers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KEYS_FILE", "MAX_Z", "CrystalGraph", "FlatArrays", "GraphArrays", "TextArrays", "merged_feature_table"]

MAX_Z = 119  # atomic numbers 1..118; row 0 is unused
KEYS_FILE = "keys.json"  # written last: a folder without it is incomplete and never opened


def _offsets(counts: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)


def _index_dtype(largest: int) -> type:
    """The narrowest signed integer type for local indices up to ``largest`` (halves the cache where it can)."""
    return np.int16 if largest < np.iinfo(np.int16).max else np.int32


@dataclass(frozen=True)
class CrystalGraph:
    """One crystal: ``z`` (N,) atomic numbers; bonds ``edge_src``/``edge_dst`` (E,) local atom indices with
    ``bond_vectors`` (E, 3) in angstrom; bond pairs ``angle_src``/``angle_dst`` (T,) local bond indices with
    ``angle_cosines`` (T,)."""

    z: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    bond_vectors: np.ndarray
    angle_src: np.ndarray
    angle_dst: np.ndarray
    angle_cosines: np.ndarray


class FlatArrays:
    """A dict of numpy arrays saved as one folder of ``.npy`` files plus ``keys.json`` (the content key of each
    row, written last); ``open`` maps them read-only. ``OFFSETS`` names the (n + 1,) array that counts the rows."""

    OFFSETS = ""

    def __init__(self, arrays: dict[str, np.ndarray], keys: Sequence[str] | None = None,
                 folder: Path | None = None) -> None:
        self.arrays = arrays
        self.folder = folder
        self._keys = list(keys) if keys is not None else None

    def __len__(self) -> int:
        return len(self.arrays[self.OFFSETS]) - 1

    @property
    def keys(self) -> list[str]:
        """The content key of every row (read from ``keys.json`` on first use: it costs time at scale)."""
        if self._keys is None:
            self._keys = json.loads((self.folder / KEYS_FILE).read_text())
        return self._keys

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in self.arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
        tmp = folder / f".{KEYS_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(self.keys))
        os.replace(tmp, folder / KEYS_FILE)

    @classmethod
    def open(cls, folder: Path) -> FlatArrays:
        """Map the arrays of ``folder`` read-only."""
        return cls({p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}, folder=folder)


class GraphArrays(FlatArrays):
    """n crystal graphs back to back. Per atom: ``atomic_numbers``; per bond: ``edge_src``, ``edge_dst`` (local atom
    indices), ``bond_vectors`` (3 floats); per bond pair: ``angle_src``, ``angle_dst`` (local bond indices),
    ``angle_cosines``; ``atom_offsets``/``edge_offsets``/``angle_offsets`` (n + 1) delimit each crystal. Atom
    features depend on the element only: ``feature_table`` (119, F) holds them by atomic number."""

    OFFSETS = "atom_offsets"

    @classmethod
    def from_crystals(cls, crystals: Sequence[CrystalGraph], keys: Sequence[str], feature_table: np.ndarray,
                      ) -> GraphArrays:
        edges = max((len(c.edge_src) for c in crystals), default=0)
        atoms = max((len(c.z) for c in crystals), default=0)
        cat = np.concatenate
        arrays = {
            "atom_offsets": _offsets([len(c.z) for c in crystals]),
            "edge_offsets": _offsets([len(c.edge_src) for c in crystals]),
            "angle_offsets": _offsets([len(c.angle_src) for c in crystals]),
            "atomic_numbers": cat([c.z for c in crystals]).astype(np.int16),
            "edge_src": cat([c.edge_src for c in crystals]).astype(_index_dtype(atoms)),
            "edge_dst": cat([c.edge_dst for c in crystals]).astype(_index_dtype(atoms)),
            "bond_vectors": cat([c.bond_vectors for c in crystals]).astype(np.float32).reshape(-1, 3),
            "angle_src": cat([c.angle_src for c in crystals]).astype(_index_dtype(edges)),
            "angle_dst": cat([c.angle_dst for c in crystals]).astype(_index_dtype(edges)),
            "angle_cosines": cat([c.angle_cosines for c in crystals]).astype(np.float32),
            "feature_table": feature_table.astype(np.float32),
        }
        return cls(arrays, keys)

    @property
    def feature_dim(self) -> int:
        return int(self.arrays["feature_table"].shape[1])

    def crystal(self, row: int) -> CrystalGraph:
        """Views (no copies) of crystal ``row``'s arrays."""
        a = self.arrays
        atoms = slice(a["atom_offsets"][row], a["atom_offsets"][row + 1])
        edges = slice(a["edge_offsets"][row], a["edge_offsets"][row + 1])
        angles = slice(a["angle_offsets"][row], a["angle_offsets"][row + 1])
        return CrystalGraph(a["atomic_numbers"][atoms], a["edge_src"][edges], a["edge_dst"][edges],
                            a["bond_vectors"][edges], a["angle_src"][angles], a["angle_dst"][angles],
                            a["angle_cosines"][angles])

    def num_atoms(self, row: int) -> int:
        offsets = self.arrays["atom_offsets"]
        return int(offsets[row + 1] - offsets[row])


class TextArrays(FlatArrays):
    """n descriptions' embeddings: ``text`` (n, D) the whole text as one input (cut at the encoder's token limit),
    ``text_mean`` (n, D) the normalised mean of its sentence vectors (every sentence counts), and ``sentences``
    (M, D) every sentence's vector, crystal i's rows ``sentence_offsets[i]:sentence_offsets[i + 1]``."""

    OFFSETS = "sentence_offsets"

    @property
    def dim(self) -> int:
        return int(self.arrays["text"].shape[1])

    def sentences(self, row: int, limit: int) -> np.ndarray:
        """The first ``limit`` sentence vectors of description ``row`` (a view)."""
        offsets = self.arrays["sentence_offsets"]
        start = int(offsets[row])
        return self.arrays["sentences"][start : min(int(offsets[row + 1]), start + limit)]


def merged_feature_table(shards: Sequence[GraphArrays]) -> np.ndarray:
    """One atom-feature table from every shard's (each holds the rows of the elements it has; the rest are 0)."""
    table = np.zeros_like(shards[0].arrays["feature_table"])
    for shard in shards:
        part = np.asarray(shard.arrays["feature_table"])
        known = part.any(axis=1)
        table[known] = part[known]
    return table
