"""The two interchangeable message-passing paths of the ALIGNN layers: DGL's kernels (CPU) and plain PyTorch gathers
and index sums (any device, CUDA included). Both compute the same maths on the same index tensors; the model's
parameters do not depend on the path, so a checkpoint trained on one runs on the other.

A path offers two operations on a batch-wide graph given as ``src``/``dst`` index tensors:

- ``edge_gated(src_term, dst_term, edge_term, value)``: the edge gate ``m_ij = src_term_i + dst_term_j +
  edge_term_ij`` (E, F) and the gated mean of the messages arriving at each node,
  ``sum_i sigmoid(m_ij) * value_i / (sum_i sigmoid(m_ij) + 1e-6)`` (N, F);
- ``mean_by_crystal(x, counts)``: the mean of consecutive node rows per crystal (B, F).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from tune_fusion.errors import ConfigError

__all__ = ["EPS", "GRAPHS", "READOUTS", "DGLGraph", "TorchGraph", "dgl_available", "dgl_mean_by_crystal",
           "mean_by_crystal", "resolve_backend"]

log = logging.getLogger(__name__)

EPS = 1e-6


class TorchGraph:
    """Message passing with gathers and ``index_add_`` (atomic adds on CUDA); runs wherever torch runs."""

    backend = "torch"

    def __init__(self, src: Tensor, dst: Tensor, num_nodes: int) -> None:
        self.src, self.dst, self.num_nodes = src, dst, num_nodes

    def edge_gated(self, src_term: Tensor, dst_term: Tensor, edge_term: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        m = src_term.index_select(0, self.src) + dst_term.index_select(0, self.dst) + edge_term  # (E, F)
        sigma = torch.sigmoid(m)
        zeros = sigma.new_zeros(self.num_nodes, sigma.shape[1])
        weighted = zeros.index_add(0, self.dst, value.index_select(0, self.src) * sigma)
        norm = zeros.index_add(0, self.dst, sigma)
        return m, weighted / (norm + EPS)


class DGLGraph(TorchGraph):
    """The same operations with DGL's fused CPU kernels (``u_add_v`` edge kernel, ``u_mul_e``/``copy_e`` sums)."""

    backend = "dgl"

    def __init__(self, src: Tensor, dst: Tensor, num_nodes: int) -> None:
        import dgl

        super().__init__(src, dst, num_nodes)
        self.graph = dgl.graph((src, dst), num_nodes=num_nodes)

    def edge_gated(self, src_term: Tensor, dst_term: Tensor, edge_term: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        import dgl.function as fn

        g = self.graph
        with g.local_scope():
            g.ndata["gate_src"], g.ndata["gate_dst"], g.ndata["value"] = src_term, dst_term, value
            g.apply_edges(fn.u_add_v("gate_src", "gate_dst", "gate"))
            m = g.edata["gate"] + edge_term  # (E, F)
            g.edata["sigma"] = torch.sigmoid(m)
            g.update_all(fn.u_mul_e("value", "sigma", "msg"), fn.sum("msg", "weighted"))
            g.update_all(fn.copy_e("sigma", "msg"), fn.sum("msg", "norm"))
            return m, g.ndata["weighted"] / (g.ndata["norm"] + EPS)


def mean_by_crystal(x: Tensor, counts: Tensor) -> Tensor:
    """(N, F) rows of consecutive crystals -> (B, F) per-crystal means (``counts`` (B,) rows each, all >= 1)."""
    crystal = torch.repeat_interleave(torch.arange(len(counts), device=x.device), counts, output_size=x.shape[0])
    sums = x.new_zeros(len(counts), x.shape[1]).index_add_(0, crystal, x)
    return sums / counts.unsqueeze(1).to(x.dtype)


def dgl_mean_by_crystal(x: Tensor, counts: Tensor) -> Tensor:
    """The same with DGL's segment reduction."""
    from dgl.ops import segment_reduce

    return segment_reduce(counts, x, "mean")


GRAPHS = {"torch": TorchGraph, "dgl": DGLGraph}
READOUTS = {"torch": mean_by_crystal, "dgl": dgl_mean_by_crystal}


@functools.cache
def dgl_available() -> bool:
    """True when DGL imports here (with tune_fusion's compatibility step; see ``tune_fusion._dgl_compat``)."""
    try:
        import dgl  # noqa: F401
    except Exception as err:  # a missing or broken DGL install: the torch path is used
        log.info("DGL does not import (%s): message passing uses the torch path", err)
        return False
    return True


def resolve_backend(name: str, device: torch.device | str) -> str:
    """``graph_backend`` for a run on ``device``: auto -> dgl on CPU where DGL imports, torch elsewhere."""
    on_cpu = torch.device(device).type == "cpu"
    if name == "auto":
        return "dgl" if on_cpu and dgl_available() else "torch"
    if name == "dgl" and not on_cpu:
        raise ConfigError(f"graph_backend=dgl runs on the CPU only (the DGL wheel on PyPI is a CPU build), but the "
                          f"device is {device}; use graph_backend auto or torch there")
    if name == "dgl" and not dgl_available():
        raise ConfigError("graph_backend=dgl but DGL does not import here; install requirements.txt, or use "
                          "graph_backend torch")
    if name not in GRAPHS:
        raise ConfigError(f"graph_backend={name!r} must be auto, dgl or torch")
    return name
