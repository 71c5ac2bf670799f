"""Neural network: ALIGNN encoder, text-graph fusion modules and the full model."""

from tune_fusion.model.alignn import ALIGNNBlock, ALIGNNEncoder, EdgeGatedGraphConv, RBFExpansion
from tune_fusion.model.fusion import CrossModalAttention, MiddleFusion, contrastive_loss, masked_mean, pad_by_graph
from tune_fusion.model.network import FusionNetwork, ModelOutput

__all__ = [
    "ALIGNNBlock",
    "ALIGNNEncoder",
    "CrossModalAttention",
    "EdgeGatedGraphConv",
    "FusionNetwork",
    "MiddleFusion",
    "ModelOutput",
    "RBFExpansion",
    "contrastive_loss",
    "masked_mean",
    "pad_by_graph",
]
