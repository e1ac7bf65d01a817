"""Best-of-n: per instruction, the sample with the highest reward."""

import json

import torch

from rlp_align.data.records import user_prompt
from rlp_align.models import load_policy, load_reward_model, load_tokenizer, reward_head, save_model
from rlp_align.train.best_of_n import BestOfNConfig, best_of_n, run_best_of_n


def count_e(prompts, responses):
    return torch.tensor([float(r.count("e")) for r in responses])


def test_best_of_n_returns_the_highest_reward_sample():
    tokenizer, policy = load_tokenizer("tiny"), load_policy("tiny")
    prompts = [user_prompt("Name a colour."), user_prompt("Count to three."), user_prompt("hi")]
    calls = []
    results = best_of_n(policy, tokenizer, lambda p, r: calls.append(len(r)) or count_e(p, r), prompts, n=6,
                        max_new_tokens=12, batch_size=8, seed=0)
    assert calls == [18]  # one batched reward call over every sample
    assert len(results) == 3
    for best, responses, scores, *_ in results:
        assert len(responses) == 6 and len(scores) == 6
        assert scores == count_e(None, responses).tolist()
        assert count_e(None, [best]).item() == max(scores)
        assert best == responses[scores.index(max(scores))]
    assert len({s for _, _, scores, *_ in results for s in scores}) > 1  # the reward does vary across samples


def test_run_best_of_n_with_a_reward_model(tmp_path):
    tokenizer, rm = load_tokenizer("tiny"), load_reward_model("tiny", new_head=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(reward_head(rm).weight, std=1.0)
    save_model(rm, tokenizer, tmp_path / "rm")
    src = tmp_path / "eval.json"
    src.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue."},
                               {"instruction": "Count to three.", "input": "", "output": "1, 2, 3."}]))
    out = tmp_path / "answers.jsonl"
    summary = run_best_of_n(BestOfNConfig(policy="tiny", reward_model=str(tmp_path / "rm"),
                                          instructions_file=str(src), output_file=str(out), n=4, max_new_tokens=8))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["answers"] == 2 and summary["mean_best_score"] >= summary["mean_score"]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Count to three."}]
    assert rows[1]["reference"] == "1, 2, 3." and rows[1]["meta"]["n"] == 4
    assert {"prompt", "response", "reference", "subset", "constraints", "meta"} == set(rows[0])
