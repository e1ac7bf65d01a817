"""Models: which folder a name means (`registry`), loading and saving (`load`), reading an RM (`scoring`),
the sampler (`generation`), log-probs and temperature (`logprobs`), sentence embeddings (`embeddings`),
tokenizer fingerprints for models that exchange token ids (`tokens`).

May import: core and data. Everything from train/judge up may import it.

Layering inside the package: ``registry`` (names, cache, built-in and tiny models) and ``scoring`` (reward
head, r(x, y) at the last real token) import nothing else from it; ``load`` (tokenizers, pad policy,
policies, reward/value models, LoRA, save) builds on both.
The public names are re-exported here, so ``from rlp_align.models import load_policy`` keeps working.
"""

from rlp_align.models.load import (
    apply_lora,
    ensure_pad_token,
    load_policy,
    load_reward_model,
    load_tokenizer,
    load_value_model,
    merge_lora,
    save_model,
)
from rlp_align.models.registry import (
    BUILTIN_MODEL,
    TINY_MODEL,
    build_tiny_model,
    cache_dir,
    convert_builtin_model,
    resolve_model,
)
from rlp_align.models.scoring import (
    READOUTS,
    last_token_index,
    readout_of,
    reward_head,
    reward_scores,
    score_texts,
    unwrap_model,
)

_unwrap = unwrap_model  # the name before the split into a package; other branches still import it

__all__ = [
    "BUILTIN_MODEL",
    "TINY_MODEL",
    "apply_lora",
    "build_tiny_model",
    "cache_dir",
    "convert_builtin_model",
    "ensure_pad_token",
    "READOUTS",
    "last_token_index",
    "readout_of",
    "load_policy",
    "load_reward_model",
    "load_tokenizer",
    "load_value_model",
    "merge_lora",
    "resolve_model",
    "reward_head",
    "reward_scores",
    "save_model",
    "score_texts",
    "unwrap_model",
]
