"""How far bf16 autocast moves what DPO reads and follows: log-probs, log-ratios, margins, losses, gradients.

On the demo's own pairs (``recipes/dpo_smollm2_sentiment.yaml``, read from the completion cache a finished run
left; nothing is sampled here) and a trained adapter (a run folder's ``adapter/``), each quantity DPO computes
is evaluated three ways on the same batches:

- ``fp32``: no autocast (the reference values);
- ``bf16``: the training forward's bf16 autocast, policy and reference alike (what ``train.precision: bf16``
  computes);
- ``bf16, fp32 head``: the same, but the lm-head and log-softmax of the scored positions in fp32 (the body in
  bf16): the share of the error that rounding the logits to bf16 makes.

Reported: the mean absolute error (against fp32) of the summed log-probs, of the policy-minus-reference
log-ratios, of the DPO margins ``beta * (ratio_chosen - ratio_rejected)`` and of the per-batch losses, and the
cosine between each batch's LoRA gradient and the fp32 one. The policy equals its reference before training
(the adapter's B is 0): there every log-ratio is exactly 0 in both precisions, which is checked too.

Usage::

    python benchmarks/precision_logps.py RUN_FOLDER [--pairs 32] [--batch 8] [overrides ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpo_bench_setup import machine_summary  # noqa: E402

import alignkit.models.logps as logps_module  # noqa: E402
from alignkit.data.collate import collate_preference  # noqa: E402
from alignkit.data.sentiment import prepare_sentiment_data  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from alignkit.models.logps import concatenated_forward  # noqa: E402
from alignkit.models.precision import autocast_context  # noqa: E402
from alignkit.peft import adapters_disabled, apply_adapter, load_adapter  # noqa: E402
from alignkit.recipe import load_recipe  # noqa: E402

MODES = ("fp32", "bf16", "bf16, fp32 head")


@contextlib.contextmanager
def _head_in_fp32() -> Iterator[None]:
    """The chunked path's lm-head and log-softmax outside autocast, on fp32 hidden states."""
    original = logps_module._chunk_token_logps

    def fp32_head(hidden, targets, head, transform, config):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", enabled=False):
            return original(hidden.float(), targets, head, transform, config)

    logps_module._chunk_token_logps = fp32_head
    try:
        yield
    finally:
        logps_module._chunk_token_logps = original


def _context(mode: str) -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(autocast_context("cpu", None if mode == "fp32" else torch.bfloat16))
    if mode == "bf16, fp32 head":
        stack.enter_context(_head_in_fp32())
    return stack


def _batch_values(model, batch, mode: str, beta: float, params) -> dict[str, torch.Tensor]:
    """Summed log-probs, log-ratios, margins, the mean DPO loss and its LoRA gradient on one batch."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with _context(mode):
        with torch.no_grad(), adapters_disabled(model):
            ref = concatenated_forward(model, inputs)
        out = concatenated_forward(model, inputs)
    policy = torch.cat([out["chosen_logps"], out["rejected_logps"]])
    reference = torch.cat([ref["chosen_logps"], ref["rejected_logps"]])
    ratio_c = out["chosen_logps"] - ref["chosen_logps"]
    ratio_r = out["rejected_logps"] - ref["rejected_logps"]
    margin = beta * (ratio_c - ratio_r)
    loss = -F.logsigmoid(margin).mean()
    grads = torch.autograd.grad(loss, params)
    return {"logps": policy.detach(), "ref_logps": reference, "ratios": torch.cat([ratio_c, ratio_r]).detach(),
            "margins": margin.detach(), "loss": loss.detach().reshape(1),
            "grad": torch.cat([g.reshape(-1) for g in grads])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run of the demo recipe (its adapter/ is loaded)")
    parser.add_argument("--recipe", type=Path, default=Path("recipes/dpo_smollm2_sentiment.yaml"))
    parser.add_argument("--pairs", type=int, default=32, help="training pairs to evaluate (from the first)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="recipe overrides that name the pairs' cache "
                        "(e.g. data.source.generation_dtype=float32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, args.overrides, check_environment=False)
    tokenizer = load_tokenizer(recipe.model)
    model = load_causal_lm(recipe.model, "cpu", tokenizer)
    data = prepare_sentiment_data(recipe.data, tokenizer, model, seed=recipe.seed)
    apply_adapter(model, recipe.adapter)
    params = [p for p in model.parameters() if p.requires_grad]
    beta = recipe.loss.beta  # type: ignore[union-attr]
    pairs = data.train[: args.pairs]
    batches = [collate_preference(pairs[i:i + args.batch], tokenizer.pad_token_id)
               for i in range(0, len(pairs), args.batch)]
    model.eval()

    untrained = [_batch_values(model, b, mode, beta, params)["ratios"] for b in batches[:1] for mode in MODES]
    print("before training, max |log-ratio| per mode:",
          ", ".join(f"{m}: {float(r.abs().max()):.3g}" for m, r in zip(MODES, untrained, strict=True)))

    load_adapter(model, args.run / "adapter")
    values = {mode: [_batch_values(model, b, mode, beta, params) for b in batches] for mode in MODES}
    exact = values["fp32"]
    print(f"\n{len(pairs)} training pairs, batches of {args.batch}, trained adapter of {args.run}\n")
    print("| quantity | fp32 mean abs | " + " | ".join(f"{m}: mean abs error" for m in MODES[1:]) + " |")
    print("|---|---:|" + "---:|" * (len(MODES) - 1))
    for key in ("logps", "ref_logps", "ratios", "margins", "loss"):
        ref = torch.cat([v[key] for v in exact])
        errors = [float((torch.cat([v[key] for v in values[m]]) - ref).abs().mean()) for m in MODES[1:]]
        print(f"| {key} | {float(ref.abs().mean()):.4g} | " + " | ".join(f"{e:.3g}" for e in errors) + " |")
    cosines = {m: [float(F.cosine_similarity(v["grad"], e["grad"], dim=0)) for v, e in zip(values[m], exact, strict=True)]
               for m in MODES[1:]}
    norms = {m: [float(v["grad"].norm() / e["grad"].norm()) for v, e in zip(values[m], exact, strict=True)]
             for m in MODES[1:]}
    for m in MODES[1:]:
        print(f"| gradient cosine with fp32 ({m}) | | min {min(cosines[m]):.4f}, mean "
              f"{sum(cosines[m]) / len(cosines[m]):.4f}; norm ratio {min(norms[m]):.3f}-{max(norms[m]):.3f} |")
    print(f"\nMachine: {machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads.")


if __name__ == "__main__":
    main()
