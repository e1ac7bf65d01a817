"""Semantic clustering of the n policy samples of one instruction (RLP-SPG step 1).

Two backends behind `cluster_responses`:

- ``nli``: bidirectional entailment (Kuhn et al., "Semantic Uncertainty", ICLR 2023), the paper's method.
  Greedy: each response is compared with the *first member* of each existing cluster, in order of
  creation; it joins the first cluster it is equivalent to, else starts a new one. Equivalence is not
  transitive, so the result depends on the order of the responses (this is Kuhn's algorithm as published).
  Rules: ``strict`` = both directions predict entailment (the paper's text); ``loose`` = neither direction
  predicts contradiction (Kuhn's released code; the default).
- ``embedding`` (offline default): cosine similarity of bundled all-MiniLM-L6-v2 sentence embeddings, same
  greedy rule against each cluster's first member, equivalent when similarity >= ``similarity_threshold``.
  It measures topical closeness, not answer identity: answers that differ in one entity or number
  ("Twitter" vs "Telegram", "11 mph" vs "24 km/h") look alike to it. Use ``nli`` when that matters.

Cluster ids are assigned in order of first appearance: response 0 is always in cluster 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch

from rlp_align.core.errors import UserError

Label = Literal["entailment", "neutral", "contradiction"]
Rule = Literal["loose", "strict"]
Backend = Literal["embedding", "nli"]
EntailFn = Callable[[str, str], Label]

# Chosen on ../shared/data/alpacafarm_multisamples_sft.json (4 SFT samples x 8 instructions, MiniLM cosine):
# samples of creative instructions ("Invent a mythological creature", "Describe a difficult decision") are at
# most 0.815 similar to each other, while paraphrased answers of factual/explanatory ones (DNA, interest
# rate, saving money) are at least 0.888 similar to their cluster's first member. 0.85 sits in the middle of
# that gap (>= 0.035 from every comparison the greedy rule makes on the fixture). At 0.80 the two
# mythological "Graston" creatures (0.815) merge; at 0.90 "DNA stands for Deoxyribonucleic Acid." splits
# from its longer paraphrases (0.888-0.895).
DEFAULT_SIMILARITY_THRESHOLD = 0.85


class TextEncoder(Protocol):
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------------------
# The greedy rule, shared by both backends


def greedy_clusters(n: int, equivalent_to: Callable[[int, list[int]], list[bool]]) -> list[int]:
    """Greedy clustering of items 0..n-1 against each cluster's first member.

    ``equivalent_to(i, reps)`` says, for each representative index in ``reps`` (first members of the
    existing clusters, in creation order), whether item i is equivalent to it; asking for all
    representatives at once lets a backend batch its model calls.
    """
    ids: list[int] = []
    reps: list[int] = []
    for i in range(n):
        matches = equivalent_to(i, reps) if reps else []
        cluster = next((c for c, ok in enumerate(matches) if ok), None)
        if cluster is None:
            cluster = len(reps)
            reps.append(i)
        ids.append(cluster)
    return ids


def equivalent(forward: Label, backward: Label, rule: Rule) -> bool:
    """Kuhn et al. 2023 bidirectional entailment from the two NLI predictions a=>b and b=>a."""
    if rule == "strict":
        return forward == "entailment" and backward == "entailment"
    if rule == "loose":
        return forward != "contradiction" and backward != "contradiction"
    raise UserError(f"unknown entailment rule '{rule}': choose 'loose' or 'strict'")


# ----------------------------------------------------------------------------------------------------------
# NLI backend


class NLIEntailment:
    """Any local AutoModelForSequenceClassification NLI checkpoint as an entailment function.

    ``nli(premise, hypothesis)`` -> label; ``nli.predict_batch(pairs, instruction)`` for many pairs. With
    ``prepend_instruction`` the instruction is put before both texts, as Kuhn et al. do with the question.
    Long inputs are truncated explicitly ('longest_first' to ``max_length`` tokens).
    """

    def __init__(
        self,
        model_path: str | Path,
        max_length: int = 256,
        prepend_instruction: bool = True,
        batch_size: int = 16,
        device: str | torch.device | None = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rlp_align.core.device import default_device

        device = device or default_device()

        folder = Path(model_path)
        if not folder.is_dir():
            raise UserError(f"NLI model folder {folder} does not exist (give a local checkpoint folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        try:  # safetensors only: pickle weights can run code when loaded
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
        except OSError as e:
            raise UserError(f"cannot load an NLI model (safetensors weights) from {folder}: {e}") from None
        self.model = self.model.to(device).eval()
        self.max_length, self.prepend_instruction = max_length, prepend_instruction
        self.batch_size, self.device = batch_size, device
        self.labels = self._label_map(self.model.config.id2label, folder)

    @staticmethod
    def _label_map(id2label: dict, folder: Path) -> dict[int, Label]:
        """Map class index -> our label from config.id2label, case-insensitively."""
        mapping: dict[int, Label] = {}
        for idx, name in id2label.items():
            low = str(name).lower()
            if low.startswith("entail"):
                mapping[int(idx)] = "entailment"
            elif low.startswith("contradict"):
                mapping[int(idx)] = "contradiction"
            else:  # "neutral", or a 2-way model's "not_entailment"
                mapping[int(idx)] = "neutral"
        found = set(mapping.values())
        if "entailment" not in found or "contradiction" not in found:
            raise UserError(
                f"{folder}: config.id2label {dict(id2label)} has no 'entailment' and 'contradiction' labels; "
                "use a 3-way NLI checkpoint (e.g. MNLI-trained) or fix its config.json id2label"
            )
        return mapping

    def _with_instruction(self, text: str, instruction: str | None) -> str:
        return f"{instruction} {text}" if (self.prepend_instruction and instruction) else text

    @torch.no_grad()
    def predict_batch(self, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[Label]:
        out: list[Label] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            enc = self.tokenizer(
                [self._with_instruction(p, instruction) for p, _ in chunk],
                [self._with_instruction(h, instruction) for _, h in chunk],
                padding=True,
                truncation="longest_first",
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits
            out.extend(self.labels[int(i)] for i in logits.argmax(-1))
        return out

    def __call__(self, premise: str, hypothesis: str) -> Label:
        return self.predict_batch([(premise, hypothesis)])[0]


def _batched(entail_fn: EntailFn, instruction: str | None) -> Callable[[list[tuple[str, str]]], list[Label]]:
    """A batch version of ``entail_fn``: its own ``predict_batch`` when it has one, else one call per pair."""
    predict_batch = getattr(entail_fn, "predict_batch", None)
    if predict_batch is not None:
        return lambda pairs: predict_batch(pairs, instruction=instruction)
    return lambda pairs: [entail_fn(p, h) for p, h in pairs]


def cluster_by_entailment(
    responses: list[str], entail_fn: EntailFn, rule: Rule = "loose", instruction: str | None = None
) -> list[int]:
    """Kuhn et al. 2023 greedy bidirectional-entailment clustering (see module docstring)."""
    if rule not in ("loose", "strict"):
        raise UserError(f"unknown entailment rule '{rule}': choose 'loose' or 'strict'")
    predict = _batched(entail_fn, instruction)

    def equivalent_to(i: int, reps: list[int]) -> list[bool]:
        # both directions against every representative in one batch
        pairs = [(responses[r], responses[i]) for r in reps] + [(responses[i], responses[r]) for r in reps]
        labels = predict(pairs)
        k = len(reps)
        return [equivalent(labels[j], labels[k + j], rule) for j in range(k)]

    return greedy_clusters(len(responses), equivalent_to)


# ----------------------------------------------------------------------------------------------------------
# Embedding backend


def cluster_by_similarity(embeddings: torch.Tensor, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> list[int]:
    """Greedy clustering of unit-norm embeddings: join the first cluster whose first member has cosine
    similarity >= ``threshold``."""
    sims = embeddings @ embeddings.T
    return greedy_clusters(len(embeddings), lambda i, reps: [bool(sims[i, r] >= threshold) for r in reps])


def _encoder(encoder: TextEncoder | None) -> TextEncoder:
    if encoder is not None:
        return encoder
    from rlp_align.models.embeddings import bundled_encoder

    return bundled_encoder()


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def largest_cluster(ids: list[int]) -> tuple[int, int]:
    """(cluster id, size) of the largest cluster; on a tie the first-formed cluster (lowest id) wins."""
    if not ids:
        raise ValueError("no responses to cluster")
    sizes = cluster_sizes(ids)
    best = max(range(len(sizes)), key=lambda c: (sizes[c], -c))
    return best, sizes[best]


def cluster_sizes(ids: list[int]) -> list[int]:
    """Size of each cluster, indexed by cluster id."""
    sizes = [0] * (max(ids) + 1 if ids else 0)
    for c in ids:
        sizes[c] += 1
    return sizes


def cluster_responses(
    responses: list[str],
    backend: Backend = "embedding",
    *,
    instruction: str | None = None,
    entail_fn: EntailFn | None = None,
    rule: Rule = "loose",
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
    encoder: TextEncoder | None = None,
) -> list[int]:
    """Cluster id per response, ids in order of first appearance.

    backend ``nli`` needs ``entail_fn`` (an `NLIEntailment` or any ``(premise, hypothesis) -> label``);
    ``instruction`` is passed to an `NLIEntailment` that prepends it. Backend ``embedding`` uses
    ``encoder`` (default: the bundled all-MiniLM-L6-v2) and ``similarity_threshold``.
    """
    if not responses:
        return []
    if backend == "nli":
        if entail_fn is None:
            raise UserError("the 'nli' clustering backend needs an entailment model: set nli_model to a local "
                            "NLI checkpoint folder (or use backend 'embedding')")
        return cluster_by_entailment(responses, entail_fn, rule, instruction)
    if backend == "embedding":
        return cluster_by_similarity(_encoder(encoder).encode(responses), similarity_threshold)
    raise UserError(f"unknown clustering backend '{backend}': choose 'embedding' or 'nli'")


def cluster_many(
    response_sets: list[list[str]],
    backend: Backend = "embedding",
    *,
    instructions: list[str | None] | None = None,
    entail_fn: EntailFn | None = None,
    rule: Rule = "loose",
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
    encoder: TextEncoder | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """`cluster_responses` for many instructions; the embedding backend encodes all responses in one pass."""
    instructions = instructions if instructions is not None else [None] * len(response_sets)
    if backend != "embedding":
        return [
            cluster_responses(rs, backend, instruction=ins, entail_fn=entail_fn, rule=rule)
            for rs, ins in zip(response_sets, instructions)
        ]
    flat = [r for rs in response_sets for r in rs]
    if not flat:
        return [[] for _ in response_sets]
    # encode in order of length so each batch pads little (~1.4x faster on CPU here), then restore the order
    order = sorted(range(len(flat)), key=lambda k: len(flat[k]))
    encoded = _encoder(encoder).encode([flat[k] for k in order], batch_size=batch_size)
    embeddings = torch.empty_like(encoded)
    embeddings[torch.tensor(order)] = encoded
    out, start = [], 0
    for rs in response_sets:
        out.append(cluster_by_similarity(embeddings[start : start + len(rs)], similarity_threshold))
        start += len(rs)
    return out
