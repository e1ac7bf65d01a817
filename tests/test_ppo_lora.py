"""LoRA PPO on one base model: the reference is the base with adapters off; each critic mode trains and resumes."""

import pytest
import torch
from safetensors.torch import load_file
from test_ppo import PROMPTS, count_e, run_then_crash_and_resume, small_cfg

from rlp_align.core.errors import UserError
from rlp_align.models import load_policy, load_reward_model, load_tokenizer, resolve_model
from rlp_align.train.ensemble import RewardModelFn
from rlp_align.train.ppo import ppo_update, shape_rewards, train_ppo
from rlp_align.train.ppo_models import build_models
from rlp_align.train.ppo_rollout import AdaptersOff, make_rollout, reference_logprobs
from rlp_align.train.training import LoraConfig, adamw, make_accelerator, read_metrics


def lora_cfg(out, **kw):
    return small_cfg(out, lora=LoraConfig(enabled=True, r=4), **kw)


def perturb_adapters(model, seed=0):
    """LoRA's B matrices start at zero (adapters are then a no-op): give them values so the policy differs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_adapters_off_is_exactly_the_base_model(tmp_path):
    ac, ref, _ = build_models(lora_cfg(tmp_path), torch.device("cpu"))
    assert isinstance(ref, AdaptersOff) and ref.model is ac.policy  # no second copy of the base
    perturb_adapters(ac.policy)
    base = load_policy("tiny").eval()
    ac.eval()
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    tokens = ids[:, -3:]
    with torch.inference_mode():
        shared = reference_logprobs(ref, ids, mask, tokens, temperature=0.7)
        alone = reference_logprobs(base, ids, mask, tokens, temperature=0.7)
        policy = reference_logprobs(ac.policy, ids, mask, tokens, temperature=0.7)
    assert torch.equal(shared, alone)
    assert not torch.allclose(policy, alone, atol=1e-3)  # the adapters are on again outside the context
    # a reference of its own is loaded only when it is not the policy's starting point
    _, separate_ref, _ = build_models(lora_cfg(tmp_path, reference=str(resolve_model("tiny"))), torch.device("cpu"))
    assert not isinstance(separate_ref, AdaptersOff)


MODES = [(True, "separate"), (True, "lora"), (True, "head"), (False, "head")]


@pytest.mark.parametrize("lora,critic", MODES)
def test_each_critic_mode_trains_one_step(tmp_path, lora, critic):
    cfg = small_cfg(tmp_path, lora=LoraConfig(enabled=lora, r=4), critic=critic, rollout_batch_size=4,
                    step_batch_size=4, max_new_tokens=6, ppo_epochs=1)
    rm = load_reward_model("tiny", new_head=True)
    ac, ref, groups = build_models(cfg, torch.device("cpu"))
    assert len(groups) == 2 and all(g["params"] for g in groups)
    if critic == "lora":  # V starts at 0 (a zero head); give the head weights so its gradient reaches the adapter
        torch.nn.init.normal_(ac.value.weight, std=0.5)
    tokenizer = load_tokenizer("tiny")
    rollout, _ = make_rollout(ac, ref, tokenizer, RewardModelFn(rm, tokenizer), PROMPTS[:4], cfg,
                              torch.Generator().manual_seed(0), True, {})
    shape_rewards(rollout, cfg, kl_coef=0.1)
    rollout.returns = rollout.returns + 1.0  # a value target away from V, so the critic must move
    b = rollout.rows(torch.arange(4))
    with torch.no_grad():  # the joint forward and the two separate ones agree (head: one trunk pass)
        logits, values = ac(b["input_ids"], b["attention_mask"], b["response"].shape[1], 1.0)
        torch.testing.assert_close(values, ac.values(b["input_ids"], b["attention_mask"], b["response"].shape[1]))
    before = {k: v.clone() for k, v in ac.state_dict().items()}
    optimizer = adamw(groups, weight_decay=0.0)
    stats = ppo_update(ac, optimizer, make_accelerator(0), rollout, cfg, 0, [g["lr"] for g in groups])
    assert stats["value_loss"] > 0
    after = ac.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("value" in k for k in changed), "the critic did not train"
    if critic == "lora":
        assert any(".critic." in k for k in changed) and any(".default." in k for k in changed), changed
    if lora:  # only adapters and heads train; the shared base (the reference) never moves
        assert all("lora_" in k or k.startswith("value.") or "modules_to_save" in k for k in changed), changed
    else:
        assert any(k.startswith("policy.") for k in changed)


@pytest.mark.parametrize("lora,critic", MODES)
def test_each_critic_mode_resumes_exactly(tmp_path, lora, critic):
    cfg = dict(steps=3, save_every=1, rollout_batch_size=4, step_batch_size=4, max_new_tokens=6,
               lora=LoraConfig(enabled=lora, r=4), critic=critic, kl_coef=0.05)
    run_then_crash_and_resume(small_cfg, tmp_path, 2, **cfg)
    train_ppo(small_cfg(tmp_path / "b", **cfg), PROMPTS, count_e)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    start = load_file(resolve_model("tiny") / "model.safetensors")
    assert a.keys() == start.keys()  # a plain merged HF folder: no adapter or value-head tensors
    for key in a:
        assert torch.equal(a[key], b[key]) or torch.allclose(a[key], b[key], atol=1e-6), key
    assert any(not torch.equal(a[k], start[k]) for k in a)
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    for key in ("reward", "kl", "value_loss"):
        assert [r[key] for r in rows_a] == pytest.approx([r[key] for r in rows_b], abs=1e-6), key
    load_policy(tmp_path / "b" / "model")


def test_lora_critic_needs_a_lora_policy(tmp_path):
    with pytest.raises(UserError, match="lora.enabled: true"):
        build_models(small_cfg(tmp_path, critic="lora"), torch.device("cpu"))


def _critic_lora_grads(tmp_path, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of one joint policy + LoRA-critic backward (as under DDP), with or without checkpointing."""
    torch.manual_seed(0)  # LoRA's A matrices are random: both builds start identical
    cfg = lora_cfg(tmp_path, critic="lora", gradient_checkpointing=checkpointing)
    ac, _, _ = build_models(cfg, torch.device("cpu"))
    perturb_adapters(ac.policy)  # policy and critic adapters differ, so reading the wrong one shows
    torch.nn.init.normal_(ac.value.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    ac.train()  # checkpointing recomputes only in training mode
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    logits, values = ac(ids, mask, 3, 1.0)
    loss = logits.log_softmax(-1)[..., 0].sum() + values.pow(2).sum()
    loss.backward()
    return {n: p.grad.clone() for n, p in ac.named_parameters() if p.grad is not None}


def test_lora_critic_gradients_are_the_same_with_gradient_checkpointing(tmp_path):
    """Checkpointing recomputes each layer during backward: the critic's layers must be recomputed under the
    critic adapter, not under whichever adapter is active by then (issue 22 section 3)."""
    plain, checkpointed = _critic_lora_grads(tmp_path, False), _critic_lora_grads(tmp_path, True)
    assert any(".critic." in n for n in plain) and any(".default." in n for n in plain)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
