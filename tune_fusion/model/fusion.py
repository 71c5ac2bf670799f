"""Text-graph fusion: gated middle fusion inside the encoder, late cross-modal attention, contrastive loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["CrossModalAttention", "MiddleFusion", "contrastive_loss", "masked_mean", "pad_by_graph"]


class MiddleFusion(nn.Module):
    """Inject the crystal's text vector into its atoms after one ALIGNN block through a learned gate.

    u  = text_scale * text_transform(text), broadcast to the crystal's atoms   (N, hidden)
    g  = sigmoid(W [h; u] + b)   (LayerNorm on [h; u] first when ``use_gate_norm``)
    h' = LayerNorm(h + dropout(g * u))

    After each forward ``last_alpha`` holds the per-atom gate mean (N,) (detached, on the model's device);
    with ``record_diagnostics = True`` ``last_diagnostics`` also holds detached h_in, u, gate and h_out (N, hidden).
    """

    def __init__(
        self,
        hidden_features: int,
        text_dim: int,
        transform_hidden: int = 128,
        dropout: float = 0.1,
        use_gate_norm: bool = False,
        learnable_scale: bool = False,
        initial_scale: float = 1.0,
    ) -> None:
        super().__init__()
        # The last module must stay an nn.Linear: analysis tools rescale its weights.
        self.text_transform = nn.Sequential(
            nn.Linear(text_dim, transform_hidden), nn.SiLU(), nn.Linear(transform_hidden, hidden_features)
        )
        scale = torch.tensor(float(initial_scale))
        if learnable_scale:
            self.text_scale = nn.Parameter(scale)
        else:
            self.register_buffer("text_scale", scale)  # persistent: same state-dict key either way
        self.gate_norm = nn.LayerNorm(2 * hidden_features) if use_gate_norm else nn.Identity()
        self.gate = nn.Linear(2 * hidden_features, hidden_features)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_features)
        self.record_diagnostics = False
        self.last_alpha: Tensor | None = None
        self.last_diagnostics: dict[str, Tensor] | None = None

    def forward(self, h: Tensor, text: Tensor, batch_num_nodes: Tensor) -> Tensor:
        """h: (N, hidden) atoms, text: (B, D) crystal text vectors, batch_num_nodes: (B,) atoms per crystal."""
        u = self.text_transform(text) * self.text_scale  # (B, hidden)
        u = torch.repeat_interleave(u, batch_num_nodes, dim=0, output_size=h.shape[0])  # (N, hidden)
        gate = torch.sigmoid(self.gate(self.gate_norm(torch.cat([h, u], dim=-1))))  # (N, hidden)
        out = self.norm(h + self.dropout(gate * u))
        self.last_alpha = gate.detach().mean(dim=-1)  # (N,)
        if self.record_diagnostics:
            self.last_diagnostics = {"h_in": h.detach(), "u": u.detach(), "gate": gate.detach(), "h_out": out.detach()}
        return out


def pad_by_graph(x: Tensor, batch_num_nodes: Tensor) -> tuple[Tensor, Tensor]:
    """Pack node rows (N, F) of a batched graph into (B, Nmax, F) plus a (B, Nmax) mask (True = real node)."""
    batch_size, num_nodes = batch_num_nodes.shape[0], x.shape[0]
    max_nodes = int(batch_num_nodes.max())  # the padded width must be known on the host (one sync)
    graph_id = torch.repeat_interleave(
        torch.arange(batch_size, device=x.device), batch_num_nodes, output_size=num_nodes
    )  # (N,) crystal of each atom
    first = torch.cumsum(batch_num_nodes, dim=0) - batch_num_nodes  # (B,) index of each crystal's first atom
    slot = torch.arange(num_nodes, device=x.device) - first[graph_id]  # (N,) position inside its crystal
    padded = x.new_zeros(batch_size, max_nodes, x.shape[-1])
    padded[graph_id, slot] = x
    mask = torch.zeros(batch_size, max_nodes, dtype=torch.bool, device=x.device)
    mask[graph_id, slot] = True
    return padded, mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, L, F) over the positions where mask (B, L) is True -> (B, F)."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class CrossModalAttention(nn.Module):
    """Late fusion: atoms attend to the description's sentences and sentences attend to atoms.

    Both sides are projected to ``dim``, attended with multi-head attention under padding masks, mean-pooled over
    their real positions, concatenated and projected to (B, dim). ``last_attention`` keeps the head-averaged
    weights of the last call (detached): ``atoms_to_sentences`` (B, Nmax, S), ``sentences_to_atoms`` (B, S, Nmax).
    """

    def __init__(self, atom_dim: int, text_dim: int, dim: int = 256, num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.atom_proj = nn.Linear(atom_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.atoms_to_sentences = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.sentences_to_atoms = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.out = nn.Linear(2 * dim, dim)
        self.last_attention: dict[str, Tensor] | None = None

    def forward(self, atoms: Tensor, batch_num_nodes: Tensor, sentences: Tensor, sentence_mask: Tensor) -> Tensor:
        """atoms: (N, atom_dim), batch_num_nodes: (B,), sentences: (B, S, D), sentence_mask: (B, S) bool."""
        a, atom_mask = pad_by_graph(self.atom_proj(atoms), batch_num_nodes)  # (B, Nmax, dim), (B, Nmax)
        s = self.text_proj(sentences)  # (B, S, dim)
        # Every crystal has >= 1 atom and >= 1 real sentence, so no softmax row is fully masked.
        a_att, w_as = self.atoms_to_sentences(a, s, s, key_padding_mask=~sentence_mask, need_weights=True)
        s_att, w_sa = self.sentences_to_atoms(s, a, a, key_padding_mask=~atom_mask, need_weights=True)
        self.last_attention = {"atoms_to_sentences": w_as.detach(), "sentences_to_atoms": w_sa.detach()}
        pooled = torch.cat([masked_mean(a_att, atom_mask), masked_mean(s_att, sentence_mask)], dim=-1)
        return self.out(pooled)  # (B, dim)


def contrastive_loss(graph_repr: Tensor, text_repr: Tensor, temperature: float = 0.1) -> Tensor:
    """Symmetric InfoNCE: crystal i's graph and text are positives, the batch's other crystals negatives."""
    logits = F.normalize(graph_repr, dim=-1) @ F.normalize(text_repr, dim=-1).T / temperature  # (B, B) cosine
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
