"""The local LLM judge (tiny GPT-2 for the plumbing, the real SmolLM2 when cached) and the reward judge."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_gpt2

from alignkit.eval.config import EvalConfig
from alignkit.eval.heldout import judge_run
from alignkit.eval.judges import judge_pairs
from alignkit.eval.judges.local import LocalJudge, letter_token_ids
from alignkit.eval.judges.reward import RewardJudge
from alignkit.eval.kl import as_reference
from alignkit.report.judge import judge_markdown, judge_report_rows
from alignkit.report.plots import plot_reward_kl, plot_win_rate

PROMPTS = ["How do I boil an egg?", "Name a colour.", "Say something kind."]
POLICY = ["Boil it for eight minutes.", "Blue.", "You are wonderful and I love your work!"]
BASELINE = ["No.", "I hate colours, they are awful.", "Whatever."]


def test_local_judge_reads_the_letters_off_the_next_token(tiny_gpt2, gpt2_tokenizer):
    judge = LocalJudge(tiny_gpt2, gpt2_tokenizer, batch_size=2)
    assert judge.a_ids == letter_token_ids(gpt2_tokenizer, "A") and len(judge.a_ids) == 2  # "A" and " A"
    items = [(p, a, b) for p, a, b in zip(PROMPTS, POLICY, BASELINE, strict=True)]
    logps = judge.letter_logps(items)
    assert logps.shape == (3, 2) and torch.all(logps < 0)
    # Batched with right padding = one at a time.
    single = torch.cat([judge.letter_logps([item]) for item in items])
    torch.testing.assert_close(logps, single, atol=1e-5, rtol=0)
    verdicts = judge.compare_many(items)
    for v, (a, b) in zip(verdicts, logps.tolist(), strict=True):
        assert v.choice == ("A" if a > b else "B") and v.margin == pytest.approx(a - b)
    # Deterministic.
    assert [v.choice for v in judge.compare_many(items)] == [v.choice for v in verdicts]


def test_local_judge_both_orders(tiny_gpt2, gpt2_tokenizer):
    judge = LocalJudge(tiny_gpt2, gpt2_tokenizer)
    pairs = judge_pairs(judge, PROMPTS, POLICY, BASELINE)
    for pair in pairs:
        swapped = judge.compare(pair.prompt, pair.baseline, pair.policy)
        assert swapped.choice == pair.policy_second.choice
        expected = {("A", "B"): 1.0, ("B", "A"): 0.0}.get((pair.policy_first.choice, pair.policy_second.choice), 0.5)
        assert pair.score == expected


def test_reward_judge_with_a_registered_reward():
    judge = RewardJudge("vader_sentiment")
    pairs = judge_pairs(judge, PROMPTS, POLICY, BASELINE)
    assert [p.score for p in pairs] == [0.5, 1.0, 1.0]  # neutral texts score 0 and 0 -> a tie
    assert pairs[0].policy_first.choice == "tie" and pairs[1].policy_first.margin > 0


def test_reward_judge_scores_each_text_once():
    seen = []

    def length(texts):
        seen.extend(texts)
        return [float(len(t)) for t in texts]

    pairs = judge_pairs(RewardJudge(length), PROMPTS, POLICY, BASELINE)
    assert [p.score for p in pairs] == [1.0, 0.0, 1.0]
    assert sorted(seen) == sorted(POLICY + BASELINE)


def test_judge_run_reference_baseline_report_and_plots(tiny_gpt2, gpt2_tokenizer, tmp_path):
    reference = make_tiny_gpt2(seed=1)
    cfg = EvalConfig(judge={"kind": "reward", "reward": "vader_sentiment"}, num_prompts=3, max_new_tokens=6,
                     batch_size=4)
    section = judge_run(cfg, tiny_gpt2, as_reference(reference), gpt2_tokenizer, PROMPTS,
                        pairs_path=tmp_path / "pairs.jsonl")
    assert section["n"] == 3 and section["baseline"] == "reference"
    assert section["wins"] + section["ties"] + section["losses"] == 3
    assert section["judge"] == {"name": "reward", "reward": "vader_sentiment"}
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 3
    rows = judge_report_rows({"judge": section})
    assert rows[0][0].startswith("win rate vs reference")
    assert "Judged win rate" in judge_markdown({"judge": section}, ["plots/win_rate.png"])
    png = plot_win_rate(section, tmp_path / "plots" / "win_rate.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_judge_run_chosen_baseline_needs_chosen_responses(tiny_gpt2, gpt2_tokenizer):
    cfg = EvalConfig(judge={"kind": "reward", "reward": "vader_sentiment"}, baseline="chosen", max_new_tokens=4)
    section = judge_run(cfg, tiny_gpt2, None, gpt2_tokenizer, PROMPTS, dict(zip(PROMPTS[:2], BASELINE[:2], strict=True)))
    assert section["n"] == 2 and section["baseline"] == "chosen"
    with pytest.raises(ValueError, match="no held-out prompt has a chosen response"):
        judge_run(cfg, tiny_gpt2, None, gpt2_tokenizer, PROMPTS, {})
    assert judge_run(EvalConfig(), tiny_gpt2, None, gpt2_tokenizer, PROMPTS) == {}


def test_reward_kl_plot(tmp_path):
    def entry(r, k):
        return {"reward": {"estimate": r, "low": r - 0.1, "high": r + 0.1},
                "kl": {"estimate": k, "low": max(0, k - 1), "high": k + 1}}

    png = plot_reward_kl({"reward": "vader_sentiment", "before": entry(0.1, 0.0), "after": entry(0.5, 3.0)},
                         tmp_path / "rk.png")
    assert png.stat().st_size > 1000


@pytest.mark.slow
def test_smollm2_as_a_local_judge(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    judge = LocalJudge(model, tokenizer, batch_size=4)
    prompts = ["What is the capital of France?", "How many legs does a spider have?",
               "Give me a tip for sleeping better.", "What is 2 + 2?"]
    good = ["The capital of France is Paris.", "A spider has eight legs.",
            "Keep a regular bedtime and avoid screens an hour before sleep.", "2 + 2 = 4."]
    bad = ["I don't know, maybe bananas.", "Spiders are purple.", "Sleep is for the weak, drink more coffee.",
           "2 + 2 = 7."]
    pairs = judge_pairs(judge, prompts, good, bad)
    assert all(p.policy_first.valid and p.policy_second.valid for p in pairs)
    # A 135M judge is weak and position-biased; still, the right answers must not lose overall.
    assert sum(p.score for p in pairs) / len(pairs) >= 0.5


def test_local_judge_a_nan_log_probability_is_an_invalid_verdict_not_a_tie(tiny_gpt2, gpt2_tokenizer, monkeypatch):
    judge = LocalJudge(tiny_gpt2, gpt2_tokenizer)
    nan = float("nan")
    monkeypatch.setattr(judge, "letter_logps", lambda items: torch.tensor([[nan, -1.0], [nan, nan], [-1.0, -2.0]]))
    verdicts = judge.compare_many([("p", "a", "b")] * 3)
    assert [v.valid for v in verdicts] == [False, False, True]
    assert verdicts[0].choice is None and "not a finite number" in (verdicts[0].error or "")
    assert verdicts[2].choice == "A"
