"""How far bf16 autocast moves what DPO reads: log-probs, policy-minus-reference log-ratios and margins.

On SmolLM2-135M-Instruct with the demo's LoRA adapter (``recipes/dpo_smollm2_sentiment.yaml``), over chat
prompts and completions sampled from the model itself, each quantity DPO computes is evaluated three ways:

- ``fp32``: no autocast (the values bf16 is compared with);
- ``bf16``: the training forward's bf16 autocast, policy and reference alike (``train.precision: bf16``);
- ``bf16, fp32 head``: the same with the lm-head and log-softmax of the scored positions in fp32: the share of
  the error that rounding the logits to bf16 makes.

The adapter's B matrices are drawn at several scales (B is 0 at the start of training and grows): the
policy-minus-reference log-ratios then range from far below to far above bf16's rounding of the activations.
Reported per scale: the fp32 log-ratios' size, the error of the bf16 ones, and the slope of bf16 on fp32 (1: no
systematic shrinkage; below 1: the adapter's small updates vanish when added to bf16 activations).
With ``--adapter FOLDER`` a trained adapter (a run's ``adapter/``) is measured too.

Usage::

    python benchmarks/precision_logps.py [--rows 8] [--scales 1e-4,1e-3,1e-2] [--adapter RUN/adapter]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpo_bench_setup import machine_summary  # noqa: E402

import alignkit.models.logps as logps_module  # noqa: E402
from alignkit.data.sentiment_prompts import sentiment_prompts  # noqa: E402
from alignkit.eval.kl import completion_batch  # noqa: E402
from alignkit.models.config import ModelConfig  # noqa: E402
from alignkit.models.decode import decode, row_uniforms  # noqa: E402
from alignkit.models.generate import Completion, eos_token_ids, format_prompt  # noqa: E402
from alignkit.models.load import load_causal_lm, load_tokenizer  # noqa: E402
from alignkit.models.logps import sequence_logps  # noqa: E402
from alignkit.models.precision import autocast_context  # noqa: E402
from alignkit.peft import LoRAConfig, adapters_disabled, apply_adapter, load_adapter  # noqa: E402

MODES = ("fp32", "bf16", "bf16, fp32 head")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@contextlib.contextmanager
def _head_in_fp32() -> Iterator[None]:
    """The chunked path's lm-head and log-softmax outside autocast, on fp32 hidden states."""
    original = logps_module._chunk_token_logps

    def fp32_head(hidden, targets, head, transform, config):  # type: ignore[no-untyped-def]
        with torch.autocast("cpu", enabled=False):
            return original(hidden.float(), targets, head, transform, config)

    logps_module._chunk_token_logps = fp32_head  # type: ignore[assignment]
    try:
        yield
    finally:
        logps_module._chunk_token_logps = original  # type: ignore[assignment]


def _logps(model, batch, mode: str) -> torch.Tensor:
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(autocast_context("cpu", None if mode == "fp32" else torch.bfloat16))
        if mode == "bf16, fp32 head":
            stack.enter_context(_head_in_fp32())
        return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]


def _row(name: str, ratios: dict[str, torch.Tensor], beta: float) -> str:
    exact = ratios["fp32"]
    cells = [f"{float(exact.abs().mean()):.3g}"]
    for mode in MODES[1:]:
        err = ratios[mode] - exact
        slope = float((ratios[mode] * exact).sum() / (exact * exact).sum())
        cells.append(f"{float(err.abs().mean()):.3g} (slope {slope:.3f})")
    return f"| {name} | " + " | ".join(cells) + f" | {beta * float((ratios['bf16'] - exact).abs().mean()):.3g} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="completions (sampled in fp32, 32 new tokens)")
    parser.add_argument("--scales", default="1e-4,1e-3,1e-2", help="std of the adapter's B entries")
    parser.add_argument("--adapter", type=Path, help="also a trained adapter folder (a run's adapter/)")
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, "cpu").eval()
    prompts = [format_prompt(tokenizer, p, True) for p in sentiment_prompts(args.rows, seed=0, split="eval")]
    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    uniforms = torch.stack([row_uniforms(0, r, 32) for r in range(len(prompts))])
    with torch.inference_mode():
        out = decode(model, prompts, uniforms, max_new_tokens=32, temperature=1.0, top_p=1.0, eos_ids=eos,
                     pad_id=pad, batch_size=len(prompts))
    completions = [Completion(prompt_index=i, prompt_ids=list(p), completion_ids=list(ids), text="")
                   for i, (p, (ids, _)) in enumerate(zip(prompts, out, strict=True))]
    batch = completion_batch(completions, pad, torch.device("cpu"))
    tokens = int((batch["labels"] != -100).sum())

    apply_adapter(model, LoRAConfig(r=16, alpha=32, target_modules=TARGETS))
    with adapters_disabled(model):
        reference = {mode: _logps(model, batch, mode) for mode in MODES}
    ref_err = {m: float((reference[m] - reference["fp32"]).abs().mean()) for m in MODES[1:]}
    print(f"{args.rows} completions, {tokens} scored tokens; summed log-probs of the reference: mean "
          f"{float(reference['fp32'].mean()):.2f} nats in fp32; mean |error| " +
          ", ".join(f"{m}: {e:.3g}" for m, e in ref_err.items()) + "\n")
    print("| adapter | fp32 mean abs log-ratio (nats) | " + " | ".join(f"{m}: mean abs error" for m in MODES[1:])
          + f" | bf16 margin error x beta={args.beta} |")
    print("|---|---:|" + "---:|" * len(MODES))
    generator = torch.Generator().manual_seed(0)
    for scale in args.scales.split(","):
        for module_name, param in model.named_parameters():
            if "lora_B" in module_name:
                with torch.no_grad():
                    param.copy_(torch.randn(param.shape, generator=generator) * float(scale))
        ratios = {mode: _logps(model, batch, mode) - reference[mode] for mode in MODES}
        print(_row(f"random B, std {scale}", ratios, args.beta))
    if args.adapter:  # the same base weights, so the same reference values
        trained = load_adapter(load_causal_lm(cfg, "cpu").eval(), args.adapter)
        ratios = {mode: _logps(trained, batch, mode) - reference[mode] for mode in MODES}
        print(_row(f"trained ({args.adapter})", ratios, args.beta))
    print(f"\nMachine: {machine_summary()}; torch {torch.__version__}, {torch.get_num_threads()} threads.")


if __name__ == "__main__":
    main()
