"""Prepared data -> batches of plain tensors: the crystals' graphs and line graphs as index tensors, their text
vectors and standardised targets. A batch moves to any device with ``batch.to(device)``; no DGL object is in it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tune_fusion.data.arrays import CrystalGraph
from tune_fusion.data.cache import PreparedData

__all__ = ["TEXT_ARRAYS", "Batch", "CrystalDataset", "Standardizer", "TextOverride", "graph_tensors", "make_loader",
           "text_tensors"]

TEXT_ARRAYS = {"sentence_mean": "text_mean", "truncated": "text"}  # DataConfig.text_vector -> stored array


@dataclass(frozen=True)
class Standardizer:
    """Target standardisation; statistics come from the training split only."""

    mean: float
    std: float

    @classmethod
    def fit(cls, targets: torch.Tensor) -> Standardizer:
        std = float(targets.std()) if len(targets) > 1 else 0.0
        return cls(float(targets.mean()), std if std > 1e-12 else 1.0)

    def transform(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean


@dataclass
class Batch:
    """B crystals with N atoms, E bonds (edges of the crystal graph), T bond pairs (edges of the line graph) and at
    most S sentences each. Indices are batch-wide: crystal b's atoms come after those of crystals 0..b-1."""

    atom_features: torch.Tensor  # (N, F) float32
    atomic_numbers: torch.Tensor  # (N,) int64
    atoms_per_crystal: torch.Tensor  # (B,) int64
    edge_src: torch.Tensor  # (E,) int64: bond i -> j goes from atom edge_src to atom edge_dst
    edge_dst: torch.Tensor  # (E,) int64
    bond_vectors: torch.Tensor  # (E, 3) float32, angstrom
    angle_src: torch.Tensor  # (T,) int64: line-graph edge from bond angle_src to bond angle_dst (they share an atom)
    angle_dst: torch.Tensor  # (T,) int64
    angle_cosines: torch.Tensor  # (T,) float32
    text: torch.Tensor  # (B, D)
    sentences: torch.Tensor  # (B, S, D), zero-padded
    sentence_mask: torch.Tensor  # (B, S) bool, True = real sentence
    target: torch.Tensor  # (B,) standardised
    index: torch.Tensor  # (B,) crystal indices into the prepared data

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return len(self.index)


def graph_tensors(crystals: list[CrystalGraph], feature_table: np.ndarray) -> dict[str, torch.Tensor]:
    """The crystals' graphs joined into one batch-wide graph (indices shifted by the atoms/bonds before them)."""
    atoms = np.array([len(c.z) for c in crystals], dtype=np.int64)
    bonds = np.array([len(c.edge_src) for c in crystals], dtype=np.int64)
    pairs = np.array([len(c.angle_src) for c in crystals], dtype=np.int64)
    atom_shift = np.repeat(np.cumsum(atoms) - atoms, bonds)  # (E,) atoms before each bond's crystal
    bond_shift = np.repeat(np.cumsum(bonds) - bonds, pairs)  # (T,) bonds before each pair's crystal

    def joined(name: str, dtype: type, shift: np.ndarray | None = None) -> torch.Tensor:
        values = np.concatenate([getattr(c, name) for c in crystals]).astype(dtype)
        return torch.from_numpy(values + shift if shift is not None else values)

    z = joined("z", np.int64)
    return {
        "atom_features": torch.from_numpy(feature_table[z.numpy()]),
        "atomic_numbers": z,
        "atoms_per_crystal": torch.from_numpy(atoms),
        "edge_src": joined("edge_src", np.int64, atom_shift),
        "edge_dst": joined("edge_dst", np.int64, atom_shift),
        "bond_vectors": joined("bond_vectors", np.float32),
        "angle_src": joined("angle_src", np.int64, bond_shift),
        "angle_dst": joined("angle_dst", np.int64, bond_shift),
        "angle_cosines": joined("angle_cosines", np.float32),
    }


def text_tensors(vectors: list[np.ndarray], sentences: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Crystal text vectors (B, D) and their sentence vectors zero-padded to (B, S, D) with the mask (B, S)."""
    longest = max(len(s) for s in sentences)
    padded = np.zeros((len(sentences), longest, vectors[0].shape[-1]), dtype=np.float32)
    mask = np.zeros((len(sentences), longest), dtype=bool)
    for row, values in enumerate(sentences):
        padded[row, : len(values)] = values
        mask[row, : len(values)] = True
    return {"text": torch.from_numpy(np.stack(vectors).astype(np.float32)), "sentences": torch.from_numpy(padded),
            "sentence_mask": torch.from_numpy(mask)}


@dataclass(frozen=True)
class TextOverride:
    """Other text than each crystal's own, for text ablations: ``text_of`` maps a crystal index to the crystal whose
    description it reads instead (a shuffle); ``constant`` gives every crystal the same text vector (D,) and
    sentence vectors (S, D)."""

    text_of: dict[int, int] | None = None
    constant: tuple[np.ndarray, np.ndarray] | None = None


class CrystalDataset(Dataset):
    """The crystals of one split; items are crystal indices, gathered into a Batch by ``collate``."""

    def __init__(self, data: PreparedData, indices: torch.Tensor, standardizer: Standardizer,
                 max_sentences: int = 24, text_vector: str = "truncated", text: TextOverride | None = None,
                 ) -> None:
        self.data = data
        self.indices = indices.tolist()
        self.standardizer = standardizer
        self.max_sentences = max_sentences
        self.text_array = TEXT_ARRAYS[text_vector]
        self.text = text or TextOverride()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return self.indices[i]

    def collate(self, indices: list[int]) -> Batch:
        data = self.data
        graph_ref, text_ref = data.arrays["graph_ref"], data.arrays["text_ref"]
        crystals = [data.graphs[graph_ref[i, 0]].crystal(int(graph_ref[i, 1])) for i in indices]
        index = torch.tensor(indices, dtype=torch.int64)
        if self.text.constant is not None:
            vector, sentences = self.text.constant
            text = text_tensors([vector] * len(indices), [sentences[: self.max_sentences]] * len(indices))
        else:
            readers = [self.text.text_of.get(i, i) if self.text.text_of else i for i in indices]
            texts = [(data.texts[text_ref[i, 0]], int(text_ref[i, 1])) for i in readers]
            text = text_tensors([shard.arrays[self.text_array][row] for shard, row in texts],
                                [shard.sentences(row, self.max_sentences) for shard, row in texts])
        return Batch(**graph_tensors(crystals, data.feature_table), **text,
                     target=self.standardizer.transform(data.targets[index]).float(), index=index)


def make_loader(
    data: PreparedData, split: str | torch.Tensor, batch_size: int, standardizer: Standardizer, shuffle: bool = False,
    seed: int = 0, num_workers: int = 0, max_sentences: int = 24, text_vector: str = "truncated",
    text: TextOverride | None = None,
) -> DataLoader:
    """A DataLoader over split ``split`` (or crystal indices); shuffled batches are reproducible from ``seed``."""
    indices = data.split(split) if isinstance(split, str) else split
    dataset = CrystalDataset(data, indices, standardizer, max_sentences, text_vector, text)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=dataset.collate, num_workers=num_workers)
