"""Worker for tests/test_multiprocess.py: run under ``torchrun --nproc_per_node N`` or plain ``python``.

    python tests/mp_worker.py MODE OUT_DIR       # MODE: reward | ppo-train | ppo-update

Every rank writes ``OUT_DIR/rank<i>.json`` with what its Accelerator saw (num_processes, process_index),
so the test can prove that N real ranks ran. The modes:
- ``reward``: `train_reward_model` on fixed preference pairs; rank 0 saves ``OUT_DIR/run/model``.
- ``ppo-train``: `train_ppo` end to end with a rule reward; every rank records a checksum of its
  policy after each PPO update (DDP must keep the replicas identical).
- ``ppo-update``: one PPO step on a *fixed global rollout* (sampled identically on every rank, then
  sharded), saved to ``OUT_DIR/policy.safetensors`` by rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from helpers import WORDS, marker_prefs  # this script's folder is sys.path[0]

from rlp_align.data.records import user_prompt

SEED = 0


def prompts(n: int) -> list:
    return [user_prompt(f"Question {i}: {' '.join(WORDS[i % 7 : i % 7 + 3 + i % 3])}?") for i in range(n)]


def count_e(prompts_: list, responses: list[str]) -> torch.Tensor:
    """A rule reward: how many letters 'e' the response has (scaled)."""
    return torch.tensor([r.count("e") / 4.0 for r in responses])


def record_rank(out: Path, accelerator, **extra) -> None:
    info = {"num_processes": accelerator.num_processes, "process_index": accelerator.process_index,
            "device": str(accelerator.device), **extra}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(info))


def param_checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


# --------------------------------------------------------------------------------------------------


def reward_cfg(out: Path):
    from rlp_align.train.reward import RewardConfig
    from rlp_align.train.training import OptimConfig

    return RewardConfig(model="tiny", output_dir=str(out / "run"), max_length=64, seed=SEED, overwrite=True,
                        optim=OptimConfig(learning_rate=1e-3, batch_size=8, max_steps=3))


def run_reward(out: Path) -> None:
    from rlp_align.train import reward
    from rlp_align.train.training import make_accelerator

    reward.train_reward_model(reward_cfg(out), marker_prefs(32))
    record_rank(out, make_accelerator(SEED))  # the same (singleton) Accelerator state the trainer used


def ppo_cfg(out: Path, **kw):
    from rlp_align.train.ppo import PPOConfig
    from rlp_align.train.training import OptimConfig

    base = dict(policy="tiny", output_dir=str(out / "run"), steps=2, rollout_batch_size=4, step_batch_size=4,
                ppo_epochs=2, max_new_tokens=8, max_prompt_length=32, kl_coef=0.05, seed=SEED, overwrite=True,
                optim=OptimConfig(learning_rate=1e-3, save_every=100))
    return PPOConfig(**{**base, **kw})


def run_ppo_train(out: Path) -> None:
    from rlp_align.models import unwrap_model
    from rlp_align.train import ppo

    checksums: list[float] = []
    queries: list[list[list[int]]] = []  # this rank's prompt token ids, per step
    original = ppo.ppo_update

    def recording_update(model, optimizer, accelerator, rollout, cfg, step, base_lrs):
        stats = original(model, optimizer, accelerator, rollout, cfg, step, base_lrs)
        checksums.append(param_checksum(unwrap_model(model).policy))
        queries.append(rollout.query.tolist())
        record_rank(out, accelerator, checksums=checksums, queries=queries)
        return stats

    ppo.ppo_update = recording_update
    ppo.train_ppo(ppo_cfg(out, step_batch_size=2), prompts(8), count_e)


def run_ppo_update(out: Path) -> None:
    """One PPO step on a global rollout that every rank computes identically, then shards."""
    from safetensors.torch import save_file

    from rlp_align.models import load_policy, load_tokenizer, load_value_model
    from rlp_align.models.generation import seeded_generator
    from rlp_align.train.ppo import ppo_update, shape_rewards
    from rlp_align.train.ppo_rollout import ActorCritic, Rollout, make_rollout
    from rlp_align.train.training import make_accelerator, shard

    cfg = ppo_cfg(out)
    acc = make_accelerator(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    ref = load_policy(cfg.policy).eval().requires_grad_(False)
    actor_critic = ActorCritic(load_policy(cfg.policy), load_value_model(cfg.policy))
    groups = [{"params": list(actor_critic.policy.parameters()), "lr": cfg.optim.learning_rate},
              {"params": list(actor_critic.value.parameters()), "lr": cfg.optim.learning_rate}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    model, optimizer = acc.prepare(actor_critic, optimizer)
    unwrapped = acc.unwrap_model(model)

    # The same generator on every rank and the whole global batch: every rank holds the same rollout.
    rollout, texts = make_rollout(unwrapped, ref, tokenizer, count_e, prompts(cfg.rollout_batch_size), cfg,
                                  seeded_generator(cfg.seed, 0), False, {})
    shape_rewards(rollout, cfg, cfg.kl_coef)  # whitening over the global batch
    rows = torch.tensor(shard(list(range(cfg.rollout_batch_size)), acc))
    local = Rollout(**{k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in vars(rollout).items()})
    ppo_update(model, optimizer, acc, local, cfg, 0, [g["lr"] for g in groups])
    record_rank(out, acc, texts=texts, local_tokens=int(local.mask.sum()),
                checksum=param_checksum(unwrapped.policy))
    if acc.is_main_process:
        save_file({k: v.detach().clone().contiguous() for k, v in unwrapped.policy.state_dict().items()},
                  str(out / "policy.safetensors"))
    acc.wait_for_everyone()


def run_uml(out: Path) -> None:
    """Reward training + lambda * L_M on a view batch of 4 instructions (2 per rank), 2 accumulation steps."""
    import random

    from helpers import words

    from rlp_align.data.records import SampleSet
    from rlp_align.models import load_tokenizer
    from rlp_align.rlp.refine import make_view_batches
    from rlp_align.rlp.uml import MultiViewHead
    from rlp_align.train import reward
    from rlp_align.train.training import make_accelerator

    rng = random.Random(1)
    sets = [SampleSet(user_prompt(f"Task {i}: {words(rng, 3)}."), [words(rng, rng.randint(3, 7)) for _ in range(4)])
            for i in range(8)]
    torch.manual_seed(SEED)
    head = MultiViewHead(64, z_dim=8, method="mib")
    views = make_view_batches(load_tokenizer("tiny"), sets, 4, 64, seed=SEED)
    cfg = reward_cfg(out)
    cfg.optim.gradient_accumulation_steps = 2
    reward.train_reward_model(cfg, marker_prefs(32), extra_loss=reward.AuxiliaryLoss(
        head, views, 0.5, "uml", ("loss", "i_jsd", "d_skl", "skipped"), learning_rate=1e-2))
    record_rank(out, make_accelerator(SEED))


MODES = {"reward": run_reward, "ppo-train": run_ppo_train, "ppo-update": run_ppo_update, "uml": run_uml}

if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    MODES[mode](out_dir)
