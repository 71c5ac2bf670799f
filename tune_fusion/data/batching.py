"""Prepared data -> batches: batched graphs and line graphs, text tensors and standardised targets."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import dgl
import torch
from torch.utils.data import DataLoader, Dataset

from tune_fusion.data.cache import PreparedData


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
    """One batch of B crystals (N atoms, E bonds, T angles, at most S sentences per crystal)."""

    graph: dgl.DGLGraph  # ndata atom_features (N, F); edata r (E, 3)
    line_graph: dgl.DGLGraph  # edata h (T,)
    text: torch.Tensor  # (B, D)
    sentences: torch.Tensor  # (B, S, D), zero-padded
    sentence_mask: torch.Tensor  # (B, S) bool, True = real sentence
    target: torch.Tensor  # (B,) standardised
    index: torch.Tensor  # (B,) crystal indices into the prepared data

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return len(self.index)


class CrystalDataset(Dataset):
    """The crystals of one split; items are crystal indices, gathered by ``collate``."""

    def __init__(self, data: PreparedData, indices: torch.Tensor, standardizer: Standardizer) -> None:
        self.data = data
        self.indices = indices.tolist()
        self.standardizer = standardizer

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return self.indices[i]

    def collate(self, indices: list[int]) -> Batch:
        tensors = self.data.tensors
        offsets = tensors["sentence_offsets"]
        counts = [int(offsets[i + 1] - offsets[i]) for i in indices]
        sentences = torch.zeros(len(indices), max(counts), tensors["sentences"].shape[1])
        mask = torch.zeros(len(indices), max(counts), dtype=torch.bool)
        for row, (i, count) in enumerate(zip(indices, counts)):
            sentences[row, :count] = tensors["sentences"][offsets[i] : offsets[i] + count]
            mask[row, :count] = True
        index = torch.tensor(indices, dtype=torch.int64)
        return Batch(
            graph=dgl.batch([self.data.graphs[i] for i in indices]),
            line_graph=dgl.batch([self.data.line_graphs[i] for i in indices]),
            text=tensors["text"][index],
            sentences=sentences,
            sentence_mask=mask,
            target=self.standardizer.transform(tensors["targets"][index]).float(),
            index=index,
        )


def make_loader(
    data: PreparedData, split: str, batch_size: int, standardizer: Standardizer, shuffle: bool = False,
    seed: int = 0, num_workers: int = 0, **kwargs: Any,
) -> DataLoader:
    """A DataLoader over split ``split``; shuffled batches are reproducible from ``seed``."""
    dataset = CrystalDataset(data, data.split(split), standardizer)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=dataset.collate, num_workers=num_workers, **kwargs)
