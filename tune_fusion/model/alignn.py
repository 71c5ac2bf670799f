"""ALIGNN crystal-graph encoder (Choudhary & DeCost, npj Comput. Mater. 7, 185 (2021)).

Atoms are the nodes of the crystal graph (bonds ``edge_src -> edge_dst`` with bond vectors); bonds are the nodes
of the line graph (bond pairs ``angle_src -> angle_dst`` sharing an atom, with the cosine of their angle). Each
ALIGNN block updates atoms gated by bond features, then bonds gated by angle features. Message passing runs on
either path of ``message_passing`` (DGL or plain PyTorch); the parameters are the same for both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tune_fusion.config import ModelConfig
from tune_fusion.errors import DataError
from tune_fusion.model.message_passing import GRAPHS, READOUTS, TorchGraph

__all__ = ["ALIGNNBlock", "ALIGNNEncoder", "BlockHook", "EdgeGatedGraphConv", "RBFExpansion", "mlp_layer"]

# (block index, atom features (N, hidden)) -> new atom features (N, hidden); runs after each ALIGNN block.
BlockHook = Callable[[int, Tensor], Tensor]


class RBFExpansion(nn.Module):
    """Gaussian radial basis: (E,) distances -> (E, bins) with centres evenly spaced in [vmin, vmax]."""

    def __init__(self, vmin: float, vmax: float, bins: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(vmin, vmax, bins))
        spacing = (vmax - vmin) / max(bins - 1, 1)
        self.gamma = 1.0 / spacing  # width ~ centre spacing, as in ALIGNN

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centers) ** 2)


def mlp_layer(in_features: int, out_features: int) -> nn.Sequential:
    """Linear -> LayerNorm -> SiLU, ALIGNN's embedding building block."""
    return nn.Sequential(nn.Linear(in_features, out_features), nn.LayerNorm(out_features), nn.SiLU())


class EdgeGatedGraphConv(nn.Module):
    """Edge-gated graph convolution (Bresson & Laurent 2017, as used in ALIGNN) with residual connections.

    Edge gate   m_ij  = A x_i + B x_j + C e_ij              (message from source i to destination j)
    Node update x_j'  = x_j + SiLU(BN(U x_j + sum_i sigmoid(m_ij) * V x_i / (sum_i sigmoid(m_ij) + eps)))
    Edge update e_ij' = e_ij + SiLU(BN(m_ij))
    """

    def __init__(self, features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.src_gate = nn.Linear(features, features)
        self.dst_gate = nn.Linear(features, features)
        self.edge_gate = nn.Linear(features, features)
        self.src_update = nn.Linear(features, features)  # V: value sent along the edge
        self.dst_update = nn.Linear(features, features)  # U: self term
        self.norm_nodes = nn.BatchNorm1d(features)
        self.norm_edges = nn.BatchNorm1d(features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, graph: TorchGraph, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """x: (N, F) node features, e: (E, F) edge features -> updated (x, e)."""
        # The four node-side linears as one matrix product (N, 4F); their parameters stay separate modules.
        weight = torch.cat([self.src_gate.weight, self.dst_gate.weight, self.src_update.weight, self.dst_update.weight])
        bias = torch.cat([self.src_gate.bias, self.dst_gate.bias, self.src_update.bias, self.dst_update.bias])
        gate_src, gate_dst, value, self_term = F.linear(x, weight, bias).chunk(4, dim=1)
        m, aggregated = graph.edge_gated(gate_src, gate_dst, self.edge_gate(e), value)
        x_new = F.silu(self.norm_nodes(self_term + aggregated))
        e_new = F.silu(self.norm_edges(m))
        return x + self.dropout(x_new), e + self.dropout(e_new)


class ALIGNNBlock(nn.Module):
    """One ALIGNN layer: atoms on g (gated by bonds), then bonds on lg (gated by angles)."""

    def __init__(self, features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.node_update = EdgeGatedGraphConv(features, dropout)
        self.edge_update = EdgeGatedGraphConv(features, dropout)

    def forward(self, g: TorchGraph, lg: TorchGraph, x: Tensor, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (N, F) atoms, y: (E, F) bonds, z: (T, F) angles -> updated (x, y, z)."""
        x, y = self.node_update(g, x, y)
        y, z = self.edge_update(lg, y, z)  # bonds are the line graph's nodes
        return x, y, z


class ALIGNNEncoder(nn.Module):
    """Crystal graph + line graph -> per-atom features (N, hidden) and the mean-pooled crystal vector (B, hidden).

    ``after_alignn_block(i, x)`` (optional) runs after ALIGNN block ``i`` (0-based) and may replace the atom
    features; middle fusion uses it, the graph-only baseline passes None, so both share this code.
    ``graph_backend`` (``dgl`` or ``torch``) picks the message-passing path; it holds no parameters.
    """

    def __init__(
        self,
        atom_feature_dim: int,
        hidden_features: int = 256,
        embedding_features: int = 64,
        edge_input_features: int = 80,
        triplet_input_features: int = 40,
        alignn_layers: int = 4,
        gcn_layers: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.atom_feature_dim = atom_feature_dim
        self.graph_backend = "torch"
        self.atom_embedding = nn.Sequential(
            mlp_layer(atom_feature_dim, embedding_features), mlp_layer(embedding_features, hidden_features)
        )
        self.edge_embedding = nn.Sequential(
            RBFExpansion(0.0, 8.0, edge_input_features),
            mlp_layer(edge_input_features, embedding_features),
            mlp_layer(embedding_features, hidden_features),
        )
        self.angle_embedding = nn.Sequential(
            RBFExpansion(-1.0, 1.0, triplet_input_features),
            mlp_layer(triplet_input_features, embedding_features),
            mlp_layer(embedding_features, hidden_features),
        )
        self.alignn_blocks = nn.ModuleList(ALIGNNBlock(hidden_features, dropout) for _ in range(alignn_layers))
        self.gcn_blocks = nn.ModuleList(EdgeGatedGraphConv(hidden_features, dropout) for _ in range(gcn_layers))

    @classmethod
    def from_config(cls, config: ModelConfig, atom_feature_dim: int) -> ALIGNNEncoder:
        """Build from the model section of the config."""
        return cls(
            atom_feature_dim=atom_feature_dim,
            hidden_features=config.hidden_features,
            embedding_features=config.embedding_features,
            edge_input_features=config.edge_input_features,
            triplet_input_features=config.triplet_input_features,
            alignn_layers=config.alignn_layers,
            gcn_layers=config.gcn_layers,
            dropout=config.graph_dropout,
        )

    def forward(self, batch, after_alignn_block: BlockHook | None = None) -> tuple[Tensor, Tensor]:
        """``batch``: a ``tune_fusion.data.Batch`` (atom features, bond and bond-pair index tensors). Returns
        (atom features (N, hidden), crystal readout (B, hidden))."""
        dtype = self.atom_embedding[0][0].weight.dtype  # float32, or float64 in parity checks
        atoms = batch.atom_features.to(dtype)
        if atoms.shape[-1] != self.atom_feature_dim:
            raise DataError(
                f"batch atom_features has {atoms.shape[-1]} features per atom but the model was built with "
                f"atom_feature_dim={self.atom_feature_dim}; rebuild the model or the data with matching atom_features"
            )
        graph_class = GRAPHS[self.graph_backend]
        g = graph_class(batch.edge_src, batch.edge_dst, atoms.shape[0])
        lg = graph_class(batch.angle_src, batch.angle_dst, batch.edge_src.shape[0])
        x = self.atom_embedding(atoms)  # (N, hidden)
        y = self.edge_embedding(torch.linalg.norm(batch.bond_vectors.to(dtype), dim=1))  # bond lengths (E,) -> (E, hidden)
        z = self.angle_embedding(batch.angle_cosines.to(dtype))  # (T,) -> (T, hidden)
        for i, block in enumerate(self.alignn_blocks):
            x, y, z = block(g, lg, x, y, z)
            if after_alignn_block is not None:
                x = after_alignn_block(i, x)
        for conv in self.gcn_blocks:
            x, y = conv(g, x, y)
        return x, READOUTS[self.graph_backend](x, batch.atoms_per_crystal)
