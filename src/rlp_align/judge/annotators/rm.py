"""The `rm` annotator: any Hugging Face reward model (sequence classifier, one output) used as gold.

score(x, y) = r(x, y) read at the last real token (`rlp_align.models.score_texts`); compare() turns two
scores into P(a > b) with the Bradley-Terry model at the annotator's temperature (0 = argmax).
"""

from __future__ import annotations

from rlp_align.data.records import Instruction
from rlp_align.judge.annotators.base import Annotator


class RMAnnotator(Annotator):
    """Gold preferences from a reward model folder (or a built-in name understood by `resolve_model`)."""

    name = "rm"

    def __init__(self, path: str, temperature: float = 0.0, batch_size: int = 8, max_length: int = 1024):
        from rlp_align.core.device import default_device
        from rlp_align.models import load_reward_model, load_tokenizer

        super().__init__(temperature)
        self.path, self.batch_size, self.max_length = str(path), batch_size, max_length
        self.model = load_reward_model(path).to(default_device())
        self.tokenizer = load_tokenizer(path)

    def describe(self) -> dict:
        return {**super().describe(), "rm_path": self.path}

    def score(self, instructions: list[Instruction], responses: list[str]) -> list[float]:
        from rlp_align.models import score_texts

        prompts = [inst.prompt for inst in instructions]
        scores = score_texts(self.model, self.tokenizer, prompts, responses, self.batch_size, self.max_length)
        return [float(s) for s in scores]
