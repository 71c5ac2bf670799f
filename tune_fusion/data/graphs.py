"""ALIGNN crystal graphs and line graphs, built with jarvis-tools (DGL) once, kept as flat arrays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from jarvis.core.atoms import Atoms

from tune_fusion.data.arrays import MAX_Z, CrystalGraph, GraphArrays
from tune_fusion.errors import DataError

__all__ = ["build_chunk", "build_graph", "graph_arrays"]

log = logging.getLogger(__name__)


def build_graph(atoms: Atoms, cutoff: float, max_neighbors: int, atom_features: str) -> tuple[CrystalGraph, np.ndarray]:
    """The crystal graph (bonds within ``cutoff``, at most ``max_neighbors`` per atom, bond vectors in angstrom) and
    its line graph (bond pairs sharing an atom, with the cosine of their angle), as jarvis-tools builds them for
    ALIGNN; plus the atom feature rows (N, F). Raises ValueError for a structure with no bond."""
    from jarvis.core.graphs import Graph

    graph, line_graph = Graph.atom_dgl_multigraph(
        atoms, cutoff=cutoff, max_neighbors=max_neighbors, atom_features=atom_features, compute_line_graph=True
    )
    if graph.num_edges() == 0:
        raise ValueError(f"no neighbours within {cutoff} angstrom")
    src, dst = graph.edges()
    angle_src, angle_dst = line_graph.edges()
    crystal = CrystalGraph(
        z=np.asarray(atoms.atomic_numbers, dtype=np.int16),
        edge_src=src.numpy(), edge_dst=dst.numpy(), bond_vectors=graph.edata["r"].float().numpy(),
        angle_src=angle_src.numpy(), angle_dst=angle_dst.numpy(), angle_cosines=line_graph.edata["h"].float().numpy(),
    )
    return crystal, graph.ndata["atom_features"].float().numpy()


def build_chunk(atoms_dicts: Sequence[dict[str, Any]], cutoff: float, max_neighbors: int, atom_features: str,
                ) -> tuple[list[CrystalGraph | str], np.ndarray]:
    """Graphs of a chunk of structures (one task's work): each a CrystalGraph, or the error text of a structure
    that cannot become a graph; plus the feature table (119, F) by atomic number of the elements seen."""
    out: list[CrystalGraph | str] = []
    table: np.ndarray | None = None
    for atoms_dict in atoms_dicts:
        try:
            crystal, features = build_graph(Atoms.from_dict(atoms_dict), cutoff, max_neighbors, atom_features)
        except Exception as err:  # a structure jarvis cannot turn into a graph is skipped and listed by id
            out.append(f"graph: {type(err).__name__}: {err}"[:200])
            continue
        if table is None:
            table = np.zeros((MAX_Z, features.shape[1]), dtype=np.float32)
        known = table[crystal.z].any(axis=1)
        if not np.array_equal(table[crystal.z][known], features[known]):
            raise DataError(f"atom_features={atom_features!r} gives one element different features in different "
                            "structures; tune-fusion stores features per element: use a per-element feature set")
        table[crystal.z] = features
        out.append(crystal)
    return out, table if table is not None else np.zeros((MAX_Z, 1), dtype=np.float32)


def graph_arrays(crystals: Sequence[CrystalGraph], keys: Sequence[str], tables: Sequence[np.ndarray]) -> GraphArrays:
    """One GraphArrays of built crystals, with the feature tables of the chunks merged."""
    widest = max(t.shape[1] for t in tables)
    table = np.zeros((MAX_Z, widest), dtype=np.float32)
    for part in tables:
        if part.shape[1] == widest:
            known = part.any(axis=1)
            table[known] = part[known]
    return GraphArrays.from_crystals(crystals, keys, table)
