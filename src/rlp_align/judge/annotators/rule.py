"""The `rule` annotator: an offline, deterministic gold judge built from checks anyone can re-run.

Score of a response y to an instruction x, in [0, 1]:

    content(y) = cos(e(y), e(reference))   if x has a reference answer    (clipped to [0, 1])
               = 0.75                      if y is that reference answer itself (REFERENCE_SIMILARITY)
               = cos(e(y), e(instruction)) if x has no reference
    quality(y) = content(y)                               if x has no constraints
               = (content(y) + satisfied_fraction(y)) / 2 otherwise
    penalty(y) = min(1, repetition(y) + truncation(y) + copying(y))
    score(y)   = quality(y) * (1 - penalty(y));   score = 0 for an empty answer

- e(.) is built from the mean-pooled, L2-normalised all-MiniLM-L6-v2 embedding (`rlp_align.models.embeddings`)
  of each sentence (split on . ! ? and line breaks; 128-word windows beyond that): their mean weighted
  by word count, renormalised. Text past the encoder's 256 tokens (e.g. padding) therefore still counts,
  and a sentence shared by many candidate answers is encoded once.
- satisfied_fraction is the share of the instruction's constraints met (`rlp_align.data.constraints`).
- repetition = max(0, d - 0.1) / 0.9 where d is the share of word 4-grams that repeat an earlier 4-gram
  (normal prose has d < 0.1; a sentence said five times has d near 0.8).
- truncation = 0.3 when the answer stops mid-sentence: it ends in a letter, digit or ,;:-( and its last
  line is a prose line of 4+ words (not a list item, heading, hashtag or code), or its last word is a
  function word ("and", "the", "on", ...), or it is a list item whose sibling items mostly end like
  sentences, or it is under half as long as the lines before it, or a bare list marker, or a code block
  (```) is left open.
- copying = max(0, c - 0.6) / 0.4 where c is the share of the answer's word 3-grams found in the
  instruction: restating part of the question is fine, handing the instruction back is not.

What it rewards: being close in meaning to a reference answer (which measured 0.75 for davinci-003 vs 0.69
for SFT on AlpacaFarm and does not grow with length: padding dilutes the embedding), following explicit
instructions, and producing complete, non-repetitive text. What it cannot see: factual correctness beyond
the reference, and comprehensiveness that the reference lacks (docs/annotators.md).
"""

from __future__ import annotations

import re

import torch

from rlp_align.data.constraints import satisfied_fraction, sentences
from rlp_align.data.records import Instruction
from rlp_align.judge.annotators.base import Annotator

WINDOW_WORDS = 128
# Content credited to the reference answer itself (its self-similarity, 1.0, would make it unbeatable): the mean
# similarity of text-davinci-003 answers to AlpacaFarm's gpt-3.5 references (../shared/notes/measured.md), so an
# answer of davinci-003 quality beats the reference about half the time, as in AlpacaFarm's win-rates.
REFERENCE_SIMILARITY = 0.75
TRUNCATION_PENALTY = 0.3
FUNCTION_WORDS = frozenset(
    "a an the and or but nor of to in on at for with by from as that which who whom whose is are was were be "
    "been being this these those their its his her our your my if than then so because while into onto about "
    "over under up down out off through between after before during without within not can will would should "
    "could may might must has have had do does did it they we you he she there when where how what also more "
    "most very such some any each all both either neither".split()
)
_ENDS_SENTENCE = tuple(".!?\"')]}`*|") + ("...",)
_TOKEN = re.compile(r"\w+")


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition(text: str) -> float:
    """max(0, d - 0.1) / 0.9, d = share of word 4-grams that already occurred earlier in the text."""
    grams = _ngrams(_TOKEN.findall(text.lower()), 4)
    if not grams:
        return 0.0
    d = 1.0 - len(set(grams)) / len(grams)
    return max(0.0, d - 0.1) / 0.9


def truncation(text: str) -> float:
    """TRUNCATION_PENALTY when the text visibly stops mid-sentence, else 0.

    The last line ends in a letter, digit or ,;:-( and (it is 4+ words of prose, or its last word is a
    function word, or it is a list item whose sibling items mostly end like sentences, or it is under half
    as long as the lines before it, or it is a bare list marker, or a code block was left open).
    """
    text = text.rstrip()
    if not text or not (text[-1].isalnum() or text[-1] in ",;:-(–—"):
        return 0.0
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last_line = lines[-1]
    last_word = (_TOKEN.findall(last_line.lower()) or [""])[-1]
    structured = re.match(r"([-*•#>|]|\d+[.)]|```)", last_line) is not None or "```" in text
    prose = len(last_line.split()) >= 3 and not last_line.split()[-1].startswith("#")
    # A list item that does not end like most of its sibling items (same marker kind) do: cut.
    marker = re.match(r"(\d+[.)]|[-*•])\s", last_line)
    siblings = [line for line in lines[:-1] if marker and re.match(r"\d+[.)]\s" if marker.group(1)[0].isdigit()
                                                                  else r"[-*•]\s", line)]
    style_break = (len(siblings) >= 1 and len(_TOKEN.findall(last_line)) >= 2
                   and sum(line.endswith(_ENDS_SENTENCE) for line in siblings) > len(siblings) / 2)
    # A last line under half as long as the lines before it (a poem or list stopped after a word or two).
    previous = sorted(len(_TOKEN.findall(line)) for line in lines[-4:-1])
    short_tail = bool(previous) and 2 * len(_TOKEN.findall(last_line)) < previous[len(previous) // 2]
    bare_marker = re.fullmatch(r"\d+[.)]?|[-*•]", last_line) is not None and len(lines) > 1
    open_code = text.count("```") % 2 == 1
    # Prose, or a lone list item (a list item with siblings follows their style, e.g. ingredient lists).
    prose = prose and (not structured or (marker is not None and not siblings))
    cut = prose or style_break or short_tail or bare_marker or open_code or last_word in FUNCTION_WORDS or text[-1] in ",;:-(–—"
    return TRUNCATION_PENALTY if cut else 0.0


def copying(text: str, instruction: str) -> float:
    """max(0, c - 0.6) / 0.4, c = share of the text's word 3-grams that occur in the instruction."""
    grams = _ngrams(_TOKEN.findall(text.lower()), 3)
    if not grams:
        # Too short for 3-grams: a copy only if it is the instruction itself.
        return float(" ".join(_TOKEN.findall(text.lower())) == " ".join(_TOKEN.findall(instruction.lower())))
    source = set(_ngrams(_TOKEN.findall(instruction.lower()), 3))
    c = sum(g in source for g in grams) / len(grams)
    return max(0.0, c - 0.6) / 0.4


def penalty(text: str, instruction: str) -> float:
    return min(1.0, repetition(text) + truncation(text) + copying(text, instruction))


class RuleAnnotator(Annotator):
    """Reference similarity + constraint satisfaction, discounted for degenerate text (module docstring)."""

    name = "rule"

    def __init__(self, temperature: float = 0.0, encoder: str | None = None, batch_size: int = 64):
        super().__init__(temperature)
        self.encoder_path, self.batch_size = encoder, batch_size
        self._encoder = None

    def describe(self) -> dict:
        return {**super().describe(), "encoder": self.encoder_path or "bundled all-MiniLM-L6-v2"}

    @property
    def encoder(self):
        if self._encoder is None:
            from rlp_align.models.embeddings import SentenceEncoder, bundled_encoder

            self._encoder = bundled_encoder() if self.encoder_path is None else SentenceEncoder(self.encoder_path)
        return self._encoder

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit vectors: the word-count-weighted mean of the text's sentence embeddings, renormalised.

        Sentences longer than WINDOW_WORDS words are cut into windows. Identical sentences are encoded once,
        which makes comparing many variants of one answer cheap, and text past the encoder's 256-token limit
        still counts.
        """
        pieces, owner, weight = [], [], []
        for i, text in enumerate(texts):
            for sentence in sentences(text):
                tokens = sentence.split()
                for start in range(0, len(tokens), WINDOW_WORDS):
                    pieces.append(" ".join(tokens[start : start + WINDOW_WORDS]))
                    owner.append(i)
                    weight.append(float(len(tokens[start : start + WINDOW_WORDS])))
        out = torch.zeros(len(texts), self.dim)
        if not pieces:
            return out
        # Sorted by length so each encoder batch pads to similar lengths: several times faster on CPU.
        unique = sorted(dict.fromkeys(pieces), key=len)
        vecs = self.encoder.encode(unique, batch_size=self.batch_size)
        index = {p: k for k, p in enumerate(unique)}
        rows = vecs[[index[p] for p in pieces]] * torch.tensor(weight).unsqueeze(-1)
        out.index_add_(0, torch.tensor(owner), rows)
        return torch.nn.functional.normalize(out, dim=-1)

    @property
    def dim(self) -> int:
        return int(self.encoder.model.config.hidden_size)

    def score(self, instructions: list[Instruction], responses: list[str]) -> list[float]:
        anchors = [inst.reference if inst.reference else inst.text for inst in instructions]
        live = [i for i, r in enumerate(responses) if r.strip()]
        if not live:
            return [0.0] * len(responses)
        vec = self.embed([responses[i] for i in live] + [anchors[i] for i in live])
        k = len(live)
        content = (vec[:k] * vec[k:]).sum(-1).clamp(0, 1).tolist()
        scores = [0.0] * len(responses)
        for j, i in enumerate(live):
            inst, text = instructions[i], responses[i]
            quality = content[j]
            if inst.reference and text.strip() == inst.reference.strip():
                quality = REFERENCE_SIMILARITY  # the reference is not judged by its similarity to itself
            if inst.constraints:
                quality = (quality + satisfied_fraction(inst.constraints, text)) / 2
            scores[i] = quality * (1.0 - penalty(text, inst.text))
        return scores
