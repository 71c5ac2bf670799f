"""The full model: ALIGNN encoder (+ optional middle fusion), text branch, cross-modal attention and head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tune_fusion.config import ModelConfig
from tune_fusion.errors import DataError
from tune_fusion.model.alignn import ALIGNNEncoder
from tune_fusion.model.fusion import CrossModalAttention, MiddleFusion

__all__ = ["FusionNetwork", "ModelOutput"]


@dataclass
class ModelOutput:
    """What ``FusionNetwork.forward`` returns."""

    prediction: Tensor  # (B,) standardised target, identity link
    graph_repr: Tensor  # (B, hidden) mean-pooled atom features
    text_repr: Tensor | None  # (B, text_projection_dim); None when graph_only
    contrastive_pair: tuple[Tensor, Tensor] | None  # projected (graph, text), each (B, text_projection_dim)


def _projection(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.SiLU(), nn.Linear(out_features, out_features))


class FusionNetwork(nn.Module):
    """Crystal graph + description -> property. ``graph_only`` builds the ALIGNN baseline with no text modules.

    The state-dict keys depend only on (config, atom_feature_dim, text_dim), so a checkpoint reloads into
    ``FusionNetwork(config, atom_feature_dim, text_dim)``. Middle-fusion modules live in
    ``middle_fusion_modules["layer_<i>"]`` (i = 0-based ALIGNN block after which they run).
    """

    def __init__(self, config: ModelConfig, atom_feature_dim: int, text_dim: int) -> None:
        super().__init__()
        self.config = config
        self.atom_feature_dim = atom_feature_dim
        self.text_dim = text_dim
        hidden = config.hidden_features
        use_text = not config.graph_only
        self.encoder = ALIGNNEncoder.from_config(config, atom_feature_dim)
        # fusion_layer_indices is () when graph_only or middle fusion is off.
        self.middle_fusion_modules = nn.ModuleDict({
            f"layer_{i}": MiddleFusion(
                hidden,
                text_dim,
                transform_hidden=config.middle_fusion_hidden_dim,
                dropout=config.middle_fusion_dropout,
                use_gate_norm=config.middle_fusion_use_gate_norm,
                learnable_scale=config.middle_fusion_use_learnable_scale,
                initial_scale=config.middle_fusion_initial_scale,
            )
            for i in config.fusion_layer_indices
        })
        self.text_projection = (
            nn.Sequential(nn.Linear(text_dim, config.text_projection_dim), nn.SiLU()) if use_text else None
        )
        self.cross_modal = (
            CrossModalAttention(
                hidden,
                text_dim,
                dim=config.cross_modal_hidden_dim,
                num_heads=config.cross_modal_num_heads,
                dropout=config.cross_modal_dropout,
            )
            if use_text and config.use_cross_modal
            else None
        )
        use_contrastive = use_text and config.use_contrastive
        self.graph_contrastive_head = _projection(hidden, config.text_projection_dim) if use_contrastive else None
        self.text_contrastive_head = (
            _projection(config.text_projection_dim, config.text_projection_dim) if use_contrastive else None
        )
        head_in = hidden
        head_in += config.text_projection_dim if use_text else 0
        head_in += config.cross_modal_hidden_dim if self.cross_modal is not None else 0
        self.head = nn.Sequential(nn.Linear(head_in, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    @property
    def graph_backend(self) -> str:
        """The message-passing path, ``dgl`` or ``torch`` (holds no parameters; switch with ``use_graph_backend``)."""
        return self.encoder.graph_backend

    def use_graph_backend(self, name: str) -> FusionNetwork:
        """Run message passing with ``name`` (``dgl`` or ``torch``; see ``message_passing.resolve_backend``)."""
        self.encoder.graph_backend = name
        return self

    def forward(self, batch: Any) -> ModelOutput:
        """``batch``: a ``tune_fusion.data.Batch``; graph-only models read only its graph tensors, fused ones also
        ``text`` (B, D) and, with cross-modal attention, ``sentences`` (B, S, D) and ``sentence_mask`` (B, S)."""
        counts = batch.atoms_per_crystal  # (B,) atoms per crystal
        if self.config.graph_only:
            _, graph_repr = self.encoder(batch)
            return ModelOutput(self.head(graph_repr).squeeze(-1), graph_repr, None, None)

        dtype = self.head[0].weight.dtype
        text = self._checked(batch.text, "text", (len(counts), self.text_dim)).to(dtype)

        def fuse(i: int, x: Tensor) -> Tensor:  # runs after ALIGNN block i
            key = f"layer_{i}"
            return self.middle_fusion_modules[key](x, text, counts) if key in self.middle_fusion_modules else x

        atoms, graph_repr = self.encoder(batch, fuse if len(self.middle_fusion_modules) else None)
        text_repr = self.text_projection(text)  # (B, text_projection_dim)
        parts = [graph_repr, text_repr]
        if self.cross_modal is not None:
            sentences = self._checked(batch.sentences, "sentences", (len(counts), None, self.text_dim)).to(dtype)
            mask = self._checked(batch.sentence_mask, "sentence_mask", tuple(sentences.shape[:2])).bool()
            parts.append(self.cross_modal(atoms, counts, sentences, mask))
        prediction = self.head(torch.cat(parts, dim=-1)).squeeze(-1)
        pair = None
        if self.graph_contrastive_head is not None:
            pair = (self.graph_contrastive_head(graph_repr), self.text_contrastive_head(text_repr))
        return ModelOutput(prediction, graph_repr, text_repr, pair)

    def _checked(self, tensor: Tensor, name: str, shape: tuple[int | None, ...]) -> Tensor:
        """Raise DataError unless ``tensor`` has ``shape`` (None = any size)."""
        ok = tensor.dim() == len(shape) and all(want is None or want == got for want, got in zip(shape, tensor.shape))
        if not ok:
            expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise DataError(
                f"batch.{name} has shape {tuple(tensor.shape)} but the model expects {expected} ({shape[0]} crystals "
                f"in the batch, text_dim={self.text_dim}); build the model with the data's text dimension"
            )
        return tensor

    def text_scales(self) -> dict[str, Tensor]:
        """``{"layer_<i>": text_scale}`` (detached 0-d tensors) of every middle-fusion module."""
        return {name: module.text_scale.detach() for name, module in self.middle_fusion_modules.items()}

    def alpha_stats(self) -> dict[str, Tensor]:
        """``{"layer_<i>": last per-atom gate mean (N,)}`` from the last forward (detached, on the device)."""
        return {
            name: module.last_alpha
            for name, module in self.middle_fusion_modules.items()
            if module.last_alpha is not None
        }

    def set_record_diagnostics(self, enabled: bool) -> None:
        """Switch every middle-fusion module's recording of h_in / u / gate / h_out on or off."""
        for module in self.middle_fusion_modules.values():
            module.record_diagnostics = enabled
            if not enabled:
                module.last_diagnostics = None
