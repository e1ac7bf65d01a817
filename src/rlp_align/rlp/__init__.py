"""Reward Learning on Policy: refine a reward model on the policy's own unlabelled samples.

- `uml`: RLP-UML's multi-view information-bottleneck loss (pure tensor functions and the head);
- `spg`: RLP-SPG's synthetic preference pairs by semantic self-consistency (and the Table-5 selections);
- `clustering`: grouping samples by meaning (entailment, embeddings, a world's canonical answer);
- `refine`: the refinement run that trains the RM on D plus UML and/or SPG.

May import: core, data, models, train, judge, worlds. UML and SPG stay independent of each other.
"""
