"""Trainers and samplers: SFT, the Bradley–Terry reward model, PPO and RLOO, best-of-n, policy samples.

- `training`: the run skeleton every trainer shares (`TrainingRun`: finished-check, resume, metrics,
  checkpoints, final save) and the settings composed into each (`OptimConfig`, `LoraConfig`);
- `sft`, `reward`: supervised fine-tuning and RM training;
- `ppo_config` (settings), `ppo` (the loop), `ppo_rollout`, `ppo_models`, `ppo_losses` (pure loss functions),
  `ppo_eval`, `rloo`: PPO and REINFORCE leave-one-out;
- `ensemble`: reward functions from one RM or several; `best_of_n`, `sample`: sampling from a fixed policy.

May import: core, data, models. Not judge (a sibling layer), rlp, pipeline or cli.
"""
