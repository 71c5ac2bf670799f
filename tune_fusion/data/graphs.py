"""ALIGNN crystal graphs and line graphs, built with jarvis-tools."""

from __future__ import annotations

import logging

import dgl
from jarvis.core.atoms import Atoms
from jarvis.core.graphs import Graph

log = logging.getLogger(__name__)


def build_graph(atoms: Atoms, cutoff: float, max_neighbors: int, atom_features: str) -> tuple[dgl.DGLGraph, dgl.DGLGraph]:
    """The crystal graph (ndata ``atom_features`` (N, F), edata ``r`` (E, 3) bond vectors in angstrom) and its
    line graph (one node per bond, edata ``h`` (T,) bond-angle cosines), holding only what the model reads."""
    graph, line_graph = Graph.atom_dgl_multigraph(
        atoms, cutoff=cutoff, max_neighbors=max_neighbors, atom_features=atom_features, compute_line_graph=True
    )
    if graph.num_edges() == 0:
        raise ValueError(f"no neighbours within {cutoff} angstrom")
    graph.ndata["atom_features"] = graph.ndata["atom_features"].float()
    graph.edata["r"] = graph.edata["r"].float()
    for key in list(line_graph.ndata.keys()):
        del line_graph.ndata[key]  # a copy of graph.edata["r"]; the model reads it from the graph
    line_graph.edata["h"] = line_graph.edata["h"].float()
    return graph, line_graph

