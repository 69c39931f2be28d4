"""The local LLM judge (tiny GPT-2 and a context-free unigram LM with known probabilities; the real SmolLM2
when cached) and the reward judge."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_gpt2
from torch import nn

from alignkit.eval.config import EvalConfig
from alignkit.eval.heldout import BaselineSources, judge_run
from alignkit.eval.judges import judge_pairs, parse_verdict
from alignkit.eval.judges.local import LocalJudge, letter_token_ids
from alignkit.eval.judges.reward import RewardJudge
from alignkit.eval.position_bias import judge_warnings, position_bias
from alignkit.models.kl import as_reference
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


def _letter_probability(model, tokenizer, prompt, a, b):
    """P("A") / (P("A") + P("B")) for the judge's first answer token, by one unbatched forward pass."""
    from alignkit.eval.judges.local import _render
    from alignkit.eval.judges.prompt import judge_messages

    ids = torch.tensor([_render(tokenizer, judge_messages(prompt, a, b, letter_only=True))])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
    pa = probs[letter_token_ids(tokenizer, "A")].sum().item()
    pb = probs[letter_token_ids(tokenizer, "B")].sum().item()
    return pa / (pa + pb)


def test_logprob_verdict_averages_both_orders_probabilities(tiny_gpt2, gpt2_tokenizer):
    judge = LocalJudge(tiny_gpt2, gpt2_tokenizer, batch_size=2)
    assert judge.pair_rule == "mean_probability"
    pairs = judge_pairs(judge, PROMPTS, POLICY, BASELINE)
    for pair in pairs:
        first = _letter_probability(tiny_gpt2, gpt2_tokenizer, pair.prompt, pair.policy, pair.baseline)
        second = _letter_probability(tiny_gpt2, gpt2_tokenizer, pair.prompt, pair.baseline, pair.policy)
        expected = (first + (1 - second)) / 2  # P(policy better) as A, and as B
        assert pair.policy_probability == pytest.approx(expected, abs=1e-5)
        assert pair.score == (1.0 if expected > 0.5 else 0.0)


class UnigramLM(nn.Module):
    """A causal LM whose next-token distribution ignores the context: logits are one learned vector."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


def test_a_judge_that_ignores_the_responses_is_all_ties_and_flagged(gpt2_tokenizer):
    # P("A") = 0.6 and P("B") = 0.2 over the whole vocabulary, whatever it reads: P(A | A or B) = 0.75.
    a_ids, b_ids = letter_token_ids(gpt2_tokenizer, "A"), letter_token_ids(gpt2_tokenizer, "B")
    probs = torch.full((50257,), 0.2 / (50257 - len(a_ids) - len(b_ids)), dtype=torch.float64)
    probs[a_ids] = 0.6 / len(a_ids)
    probs[b_ids] = 0.2 / len(b_ids)
    judge = LocalJudge(UnigramLM(probs.log().float()), gpt2_tokenizer)
    pairs = judge_pairs(judge, PROMPTS, POLICY, BASELINE)
    for pair in pairs:
        assert pair.policy_first.margin == pytest.approx(math.log(3), abs=1e-5)  # log(0.6 / 0.2)
        assert pair.policy_first.choice == pair.policy_second.choice == "A"
        assert pair.policy_probability == pytest.approx(0.5, abs=1e-6)  # (0.75 + (1 - 0.75)) / 2
        assert pair.score == 0.5
    bias = position_bias(pairs)
    assert (bias.flip_rate, bias.first_position_rate, bias.same_verdict_rate) == (1.0, 1.0, 1.0)
    warnings = judge_warnings(bias, max_flip_rate=0.4, max_same_verdict_rate=0.95, mean_probability=True)
    assert len(warnings) == 2 and "near-constant" in warnings[0] and "position-biased" in warnings[1]


def test_generate_verdict_parses_the_written_answer(tiny_gpt2, gpt2_tokenizer):
    judge = LocalJudge(tiny_gpt2, gpt2_tokenizer, verdict="generate", max_new_tokens=5, batch_size=2)
    assert judge.pair_rule == "agree" and "generated" in judge.describe()["verdict"]
    items = [(p, a, b) for p, a, b in zip(PROMPTS, POLICY, BASELINE, strict=True)]
    verdicts = judge.compare_many(items)
    answers = judge.generate_answers(items)
    # Batched with left padding = one at a time; a random model's text is read as the parser reads it.
    assert answers == [judge.generate_answers([item])[0] for item in items]
    for verdict, raw in zip(verdicts, answers, strict=True):
        assert verdict.raw == raw and verdict.choice == parse_verdict(raw)
        assert verdict.valid == (verdict.error is None)
    with pytest.raises(ValueError, match="eval.judge.verdict"):
        LocalJudge(tiny_gpt2, gpt2_tokenizer, verdict="sample")


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
    evaluation = judge_run(cfg, tiny_gpt2, gpt2_tokenizer, PROMPTS, BaselineSources(reference=as_reference(reference)),
                           pairs_path=tmp_path / "pairs.jsonl")
    (section,) = evaluation["baselines"]
    assert section["n"] == 3 and section["baseline"] == "reference"
    assert section["wins"] + section["ties"] + section["losses"] == 3
    assert evaluation["judge"] == {"name": "reward", "reward": "vader_sentiment"}
    assert evaluation["agreement"] is None and "no labelled" in evaluation["agreement_note"]
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 3
    report = {"judged": [evaluation]}
    rows = judge_report_rows(report)
    assert rows[0][0].startswith("win rate vs reference") and rows[0][1] == ""  # no "before" was measured
    assert "## Judged win rate: policy vs reference" in judge_markdown(report, ["plots/win_rate.png"])
    png = plot_win_rate(report["judged"], tmp_path / "plots" / "win_rate.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_judge_run_chosen_baseline_needs_chosen_responses(tiny_gpt2, gpt2_tokenizer):
    cfg = EvalConfig(judge={"kind": "reward", "reward": "vader_sentiment"}, baselines=["chosen"], max_new_tokens=4)
    chosen = dict(zip(PROMPTS[:2], BASELINE[:2], strict=True))
    evaluation = judge_run(cfg, tiny_gpt2, gpt2_tokenizer, PROMPTS, BaselineSources(chosen=chosen))
    assert evaluation["baselines"][0]["n"] == 2 and evaluation["baselines"][0]["baseline"] == "chosen"
    with pytest.raises(ValueError, match="no held-out prompt has a chosen response"):
        judge_run(cfg, tiny_gpt2, gpt2_tokenizer, PROMPTS, BaselineSources())
    with pytest.raises(ValueError, match="'base' but no base model was given"):
        judge_run(cfg.model_copy(update={"baselines": ["base"]}), tiny_gpt2, gpt2_tokenizer, PROMPTS,
                  BaselineSources())
    assert judge_run(EvalConfig(), tiny_gpt2, gpt2_tokenizer, PROMPTS, BaselineSources()) == {}


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
    monkeypatch.setattr(judge, "letter_logps", lambda items, progress=None: torch.tensor([[nan, -1.0], [nan, nan], [-1.0, -2.0]]))
    verdicts = judge.compare_many([("p", "a", "b")] * 3)
    assert [v.valid for v in verdicts] == [False, False, True]
    assert verdicts[0].choice is None and "not a finite number" in (verdicts[0].error or "")
    assert verdicts[2].choice == "A"
