"""A local causal LM as the pairwise judge: read off its next-token probabilities, or its written answer.

``verdict="logprob"`` (the default): the judge prompt (:func:`alignkit.eval.judges.prompt.judge_messages`
with ``letter_only``) is rendered with the judge's chat template (plain "system/user/assistant" lines when
it has none); each order's verdict is A when log p("A") > log p("B") for the first answer token, and its
margin is log p("A") - log p("B"). Each letter's probability sums its spellings ("A" and " A"), since
tokenizers split a leading space differently. A pair is scored by the two orders' probabilities averaged
(``pair_rule = "mean_probability"``, see :mod:`alignkit.eval.judges.base`): small models lean towards one
letter whatever the responses, and averaging over both orders cancels that lean. No text is generated, so
the verdict is deterministic and always readable.

``verdict="generate"``: the judge writes its answer to the full prompt (a one-sentence comparison, then
"More helpful: A|B") greedily, parsed by :func:`alignkit.eval.judges.prompt.parse_verdict` as an HTTP
judge's answer is; the pair is scored by the both-orders rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from alignkit.eval.judges.base import Choice, Judge, Verdict
from alignkit.eval.judges.prompt import PROMPT_VERSION, judge_messages, parse_verdict
from alignkit.eval.judges.registry import register_judge
from alignkit.models.config import ModelConfig
from alignkit.models.generate import ProgressFn, SupportsGenerate, eos_token_ids, eval_mode
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.models.padding import pad_token_rows

__all__ = ["LocalJudge", "build_local_judge", "letter_token_ids"]


def letter_token_ids(tokenizer, letter: str) -> list[int]:
    """Ids of the single tokens that spell ``letter`` (with and without a leading space)."""
    ids: list[int] = []
    for text in (letter, " " + letter):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError(f"the judge's tokenizer has no single token for {letter!r}")
    return ids


def _render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant: Answer:"
    return list(tokenizer(text)["input_ids"])


class LocalJudge(Judge):
    """Pairwise judge running a transformers causal LM in this process.

    Args:
        model: the judge model (any causal LM; eval mode is set for each call).
        tokenizer: its tokenizer.
        batch_size: judge prompts per forward pass.
        max_prompt_tokens: longer judge prompts keep their last tokens (the question and answer slot).
        name: shown in the report.
        verdict: ``logprob`` (next-token probabilities, averaged over both orders) or ``generate``.
        max_new_tokens: tokens the judge may write with ``verdict="generate"``.
    """

    name = "local"

    def __init__(self, model: nn.Module, tokenizer, *, batch_size: int = 4, max_prompt_tokens: int = 1024,
                 name: str | None = None, verdict: Literal["logprob", "generate"] = "logprob",
                 max_new_tokens: int = 64) -> None:
        if verdict not in ("logprob", "generate"):
            raise ValueError(f"eval.judge.verdict must be 'logprob' or 'generate', got {verdict!r}")
        self.verdict = verdict
        self.max_new_tokens = max_new_tokens
        self.pair_rule = "mean_probability" if verdict == "logprob" else "agree"
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.model_name = name or getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        self.a_ids = letter_token_ids(tokenizer, "A")
        self.b_ids = letter_token_ids(tokenizer, "B")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else int(pad)

    def describe(self) -> dict[str, Any]:
        how = ("next-token P(A) vs P(B), averaged over both orders" if self.verdict == "logprob"
               else f"generated answer (greedy, up to {self.max_new_tokens} tokens), parsed")
        return {"name": self.name, "model": self.model_name, "prompt_version": PROMPT_VERSION, "verdict": how}

    def compare(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        return self.compare_many([(prompt, response_a, response_b)])[0]

    @torch.inference_mode()
    def letter_logps(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> torch.Tensor:
        """(N, 2) log-probabilities of answering "A" and "B" first, for N (prompt, A, B) triples
        (``progress(done, N)`` after each batch)."""
        rows = [_render(self.tokenizer, judge_messages(p, a, b, letter_only=True))[-self.max_prompt_tokens:]
                for p, a, b in items]
        device = next(self.model.parameters()).device
        out = []
        with eval_mode(self.model):
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                # Right padding: with causal attention the last real token's logits ignore the pads.
                ids, mask = pad_token_rows(batch, self.pad_id)
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
                last = torch.tensor([len(r) - 1 for r in batch], device=device)
                logps = torch.log_softmax(logits[torch.arange(len(batch), device=device), last].float(), dim=-1)  # (B, V)
                a = torch.logsumexp(logps[:, self.a_ids], dim=-1)
                b = torch.logsumexp(logps[:, self.b_ids], dim=-1)
                out.append(torch.stack([a, b], dim=-1).cpu())
                if progress is not None:
                    progress(start + len(batch), len(rows))
        return torch.cat(out) if out else torch.zeros(0, 2)

    @torch.inference_mode()
    def generate_answers(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> list[str]:
        """The judge's greedy answers to the full judge prompt, for N (prompt, A, B) triples (``progress(done,
        N)`` after each batch)."""
        model = self.model
        if not isinstance(model, SupportsGenerate):
            raise TypeError(f"verdict 'generate' needs a judge model with transformers' generate(); "
                            f"{type(model).__name__} has none")
        rows = [_render(self.tokenizer, judge_messages(p, a, b))[-self.max_prompt_tokens:] for p, a, b in items]
        device = next(self.model.parameters()).device
        eos = eos_token_ids(self.model, self.tokenizer)
        answers: list[str] = []
        with eval_mode(self.model):
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                # Left padding: every row's answer starts at the same position.
                ids, mask = pad_token_rows(batch, self.pad_id, left=True)
                width = ids.shape[1]
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=self.pad_id, eos_token_id=eos)
                answers += self.tokenizer.batch_decode(out[:, width:].tolist(), skip_special_tokens=True)
                if progress is not None:
                    progress(len(answers), len(rows))
        return answers

    def compare_many(self, items: Sequence[tuple[str, str, str]], progress: ProgressFn | None = None) -> list[Verdict]:
        if not items:
            return []
        if self.verdict == "generate":
            parsed = [(raw, parse_verdict(raw)) for raw in self.generate_answers(items, progress)]
            return [Verdict(c, raw=raw, error=None if c else "unparseable verdict") for raw, c in parsed]
        verdicts = []
        for a, b in self.letter_logps(items, progress).tolist():
            if not (math.isfinite(a) and math.isfinite(b)):  # NaN would compare as a tie, a valid verdict
                verdicts.append(Verdict(None, raw=f"log p(A)={a} log p(B)={b}",
                                        error="the judge's log-probability is not a finite number"))
                continue
            choice: Choice = "A" if a > b else "B" if b > a else "tie"
            verdicts.append(Verdict(choice, raw=f"log p(A)={a:.4f} log p(B)={b:.4f}", margin=a - b))
        return verdicts


@register_judge("local")
def build_local_judge(cfg: Any, *, device: str = "cpu", **_: Any) -> LocalJudge:
    """A local judge from an ``eval.judge`` section: the model loaded frozen on ``device``."""
    model_cfg = ModelConfig(name_or_path=cfg.model, tokenizer=cfg.tokenizer)
    model = load_causal_lm(model_cfg, device).requires_grad_(False).eval()
    return LocalJudge(model, load_tokenizer(model_cfg), batch_size=cfg.batch_size,
                      max_prompt_tokens=cfg.max_prompt_tokens, name=cfg.model, verdict=cfg.verdict,
                      max_new_tokens=cfg.max_new_tokens)
