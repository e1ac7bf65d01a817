"""Judging answers: simulated annotators, labelling pairs, evaluation and its statistics.

- `annotators/`: gold and simulated judges (rule, reward model, LLM) behind one `Annotator` interface;
- `annotate`: label answer pairs with an annotator (noise, ties); `evaluate`: win-rates and RM accuracy;
- `stats`: paired bootstrap, McNemar, t-intervals over seeds.

May import: core, data, models. Not train (a sibling layer), rlp, pipeline or cli.
"""
