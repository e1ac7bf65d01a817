"""Loading tokenizers (with the pad-token policy), policies, reward and value models; LoRA; saving.

The reward model is a sequence classifier with ``num_labels=1``; value models are reward-model-shaped
and initialised from the RM.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlp_align.core.errors import UserError
from rlp_align.core.io import atomic_path
from rlp_align.core.threads import fit_threads
from rlp_align.models.model_kind import check_policy_folder, check_reward_model_folder, check_trained_head
from rlp_align.models.registry import resolve_model
from rlp_align.models.scoring import reward_head, unwrap_model

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


def _mismatch(e: RuntimeError, folder, what: str) -> Exception:
    """transformers reports weights whose shapes differ from config.json as a RuntimeError pointing at a
    logged table; name the embedding's shape and the config's sizes instead (``e`` itself if it is another
    RuntimeError)."""
    text = str(e)
    if "mismatch" not in text and "loading state_dict" not in text and "conversion" not in text:
        return e
    from safetensors import safe_open

    detail = ""
    try:
        config = json.loads((folder / "config.json").read_text())
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as weights:
                name = next((k for k in weights.keys() if "embed_tokens" in k or "wte" in k), None)
                if name is not None:
                    detail = (f": {name} is {list(weights.get_slice(name).get_shape())} in {file.name}, but "
                              f"config.json says vocab_size={config.get('vocab_size')}, "
                              f"hidden_size={config.get('hidden_size')}")
                    break
    except (OSError, ValueError, SafetensorError):
        pass
    return UserError(f"cannot load {what} from {folder}: the shapes of its weights differ from its config.json"
                     f"{detail}. Fix config.json (or use the folder the weights were saved with).")


def check_weights_match(folder, info: dict, what: str, *, new_head: bool = False, tied: bool = False) -> None:
    """Refuse weights that do not match the config in full: a tensor the config has but the weights lack
    (transformers would initialise it at random) or one the weights have but the config does not (dropped).

    A config whose ``num_hidden_layers`` differs from the weights' loads silently otherwise. Exactly two gaps
    are legitimate: with ``new_head``, a reward/value model built on a causal-LM backbone gets a new ``score``
    head and leaves the LM head behind; with tied embeddings (``tied``) the LM head is the embedding.
    """
    def head(key: str, names: tuple[str, ...]) -> bool:
        return key.split(".")[0] in names

    missing = sorted(k for k in info.get("missing_keys", ()) if not (new_head and head(k, ("score", "classifier")))
                     and not (tied and head(k, ("lm_head",))))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not (new_head and head(k, ("lm_head",))))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    problems = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})" for kind, keys in
                (("weights the config has but the folder lacks, which would start random", missing),
                 ("weights in the folder that the config has no place for, which would be dropped", unexpected),
                 ("weights whose shapes differ from the config", mismatched)) if keys]
    if problems:
        layers = _layer_count(folder)
        hint = (f" config.json says num_hidden_layers={layers[0]}, the weights hold {layers[1]} layers."
                if layers and layers[0] != layers[1] else "")
        raise UserError(f"cannot load {what} from {folder}: its config.json does not match its weights: "
                        f"{'; '.join(problems)}.{hint} Fix config.json (or use the folder the weights were saved "
                        "with).")


def _layer_count(folder) -> tuple[int, int] | None:
    """(layers in config.json, layers in the weights), when both can be read."""
    from safetensors import safe_open

    try:
        config = json.loads((folder / "config.json").read_text())
        indices = set()
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as weights:
                for key in weights.keys():
                    found = re.search(r"\.(?:layers|h)\.(\d+)\.", key)
                    if found:
                        indices.add(int(found.group(1)))
        return (config.get("num_hidden_layers"), len(indices)) if indices else None
    except (OSError, ValueError, SafetensorError):
        return None


def _load_kwargs(allow_pickle: bool, trust_remote_code: bool) -> dict:
    return {"dtype": torch.float32, "use_safetensors": None if allow_pickle else True,
            "trust_remote_code": trust_remote_code}


def load_policy(
    name_or_path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A causal LM in fp32 (the policy, the reference policy); a reward model is refused (`model_kind`)."""
    folder = resolve_model(name_or_path, allow_pickle=allow_pickle)
    check_policy_folder(folder)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                           **_load_kwargs(allow_pickle, trust_remote_code))
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # SafetensorError: corrupt weights
        raise UserError(f"cannot load a causal language model from {folder}: {e}") from None
    except RuntimeError as e:  # transformers' "mismatched sizes": config.json and the weights disagree
        raise _mismatch(e, folder, "a causal language model") from None
    check_weights_match(folder, info, "a causal language model",
                        tied=bool(getattr(model.config, "tie_word_embeddings", False)))
    fit_threads(model)
    return model


def load_reward_model(
    name_or_path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False,
    new_head: bool = False,
) -> PreTrainedModel:
    """A trained sequence classifier with one output (a reward model).

    With ``new_head`` (reward training, value models) a causal-LM folder (an SFT policy) is accepted: the
    backbone is reused and the linear head is new and zero-initialised, so every response starts at reward 0
    (AlpacaFarm and TRL do the same). Without it such a folder is refused (`model_kind`).
    """
    folder = resolve_model(name_or_path, allow_pickle=allow_pickle)
    if not new_head:
        check_reward_model_folder(folder)
    config = json.loads((folder / "config.json").read_text())
    is_classifier = any("ForSequenceClassification" in a for a in config.get("architectures") or [])
    if is_classifier:
        num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
        if num_labels != 1:
            raise UserError(
                f"{folder} is a classifier with {num_labels} labels; a reward model must have num_labels=1"
            )
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, output_loading_info=True, **_load_kwargs(allow_pickle, trust_remote_code)
        )
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # SafetensorError: corrupt weights
        raise UserError(f"cannot load a reward model from {folder}: {e}") from None
    except RuntimeError as e:  # transformers' "mismatched sizes": config.json and the weights disagree
        raise _mismatch(e, folder, "a reward model") from None
    if not new_head or is_classifier:
        head = {n for n, p in model.named_parameters() if any(p is q for q in reward_head(model).parameters())}
        check_trained_head(folder, sorted(head & set(info["missing_keys"])))
    # only a causal-LM backbone legitimately gets a new head (and leaves its LM head behind)
    check_weights_match(folder, info, "a reward model", new_head=not is_classifier,
                        tied=bool(getattr(model.config, "tie_word_embeddings", False)))
    if not is_classifier:
        torch.nn.init.zeros_(reward_head(model).weight)
        if getattr(reward_head(model), "bias", None) is not None:
            torch.nn.init.zeros_(reward_head(model).bias)
    if model.config.pad_token_id is None:
        # HF's own forward() needs it to find the last token; our scoring uses the attention mask.
        model.config.pad_token_id = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    fit_threads(model)
    return model


def load_value_model(name_or_path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """A value model: initialised from a reward model, or from a causal LM with a new zero head."""
    return load_reward_model(name_or_path, new_head=True, **kwargs)


def apply_lora(model: PreTrainedModel, r: int = 16, alpha: int = 32, dropout: float = 0.0) -> torch.nn.Module:
    """LoRA adapters on every linear layer of the backbone (peft); a reward/value head stays fully trainable.

    The head (``score``/``classifier``) goes to ``modules_to_save``; the LM head of a policy is not adapted.
    ``merge_lora`` turns the result back into a plain model for saving.
    """
    from peft import LoraConfig, get_peft_model

    backbone = model.base_model
    linears = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    targets = sorted({n.split(".")[-1] for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear)})
    if not targets:
        raise UserError(f"{type(model).__name__} has no linear layers in its backbone to put LoRA adapters on")
    width = min(min(m.in_features, m.out_features) for m in linears)
    if r > width:  # resources bounded by what the run needs: a rank above a layer's width adds memory, not capacity
        raise UserError(f"lora.r {r} is above the width of this model's layers ({width}): an adapter of rank r on a "
                        f"layer of width {width} can learn nothing more than rank {width}, and costs memory in "
                        f"proportion to r. Set lora.r to at most {width} (16 is the default).")
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
    model = unwrap_model(model) if not hasattr(model, "peft_config") else model
    model.config.pad_token_id = tokenizer.pad_token_id  # what HF's classifier pooling keys on
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
