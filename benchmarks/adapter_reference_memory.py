"""Memory of an adapter-off reference versus a separate frozen reference copy, on a GPT-2-small model.

DPO needs a reference model. With an adapter, the reference is the policy with its adapters switched
off (``alignkit.peft.adapters_disabled``); without one, it is a second, frozen copy of the model. This
script measures both for GPT-2 small (124M parameters, built from ``GPT2Config``, random weights: memory
does not depend on the values) and prints markdown tables:

1. per variant: parameter bytes held (policy + reference) and the peak resident memory of a fresh
   process (one per variant) that builds the models and runs one training step: policy forward and
   backward, reference forward without gradients, AdamW step;
2. trainable parameter counts of every adapter kind with its defaults, for GPT-2 small and a
   SmolLM2-135M-shaped Llama.

Usage::

    python benchmarks/adapter_reference_memory.py                  # print the tables
    python benchmarks/adapter_reference_memory.py --write benchmarks/RESULTS_adapters.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from dpo_bench_setup import machine_summary  # noqa: E402  (benchmarks/ is on sys.path when run)
from torch import nn  # noqa: E402

from alignkit.jsonio import to_json

# The adapter configs compared, by the name shown in the tables (each with its defaults).
ADAPTERS: dict[str, dict] = {
    "lora (r=8, alpha=16, default targets)": {"kind": "lora"},
    "bottleneck sequential (rf 16, identity)": {"kind": "bottleneck", "placement": "sequential"},
    "bottleneck parallel (rf 16, identity)": {"kind": "bottleneck", "placement": "parallel"},
    "bottleneck parallel (rf 16, from_mlp)": {"kind": "bottleneck", "placement": "parallel", "init": "from_mlp"},
    "bottleneck replace (rf 2, from_mlp)": {"kind": "bottleneck", "placement": "replace"},
}

# Memory variants: (adapter config or None for full fine-tuning, reference strategy).
VARIANTS: dict[str, tuple[dict | None, str]] = {
    "lora + adapter-off reference": ({"kind": "lora"}, "adapter-off"),
    "lora + separate frozen copy": ({"kind": "lora"}, "copy"),
    "bottleneck parallel + adapter-off reference": ({"kind": "bottleneck", "placement": "parallel"}, "adapter-off"),
    "bottleneck parallel + separate frozen copy": ({"kind": "bottleneck", "placement": "parallel"}, "copy"),
    "full fine-tuning + separate frozen copy": (None, "copy"),
}

BATCH, LENGTH = 2, 128

NOTES = """How to read this:

- An adapter-off reference saves one whole copy of the weights: about 475 MiB of fp32 parameters for
  GPT-2 small, which the peak RSS confirms. The reference forward costs the same compute either way.
- Full fine-tuning also keeps gradients and AdamW's two moment tensors for all 124M parameters (three
  more copies of the weights), hence its much higher peak.
- Activations of one 2 x 128-token step are small here; they grow with batch and length, alike in
  every variant.
- `replace` keeps the original MLP frozen in memory (for the exact adapter-off reference), so it does
  not shrink the model; its trainable count is the narrower MLP. On a Llama MLP, `from_mlp` adds a
  gate projection (the MLP's gated form: three matrices instead of two), hence the larger count.
- Peak RSS is the kernel's `ru_maxrss` of a fresh process per variant; "over imports" subtracts the
  peak measured right after importing torch and transformers."""


def gpt2_small() -> nn.Module:
    """GPT-2 small (124M) from its config, random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config()).eval()


def smollm2_135m_shape() -> nn.Module:
    """A Llama with SmolLM2-135M's shape (hidden 576, MLP 1536, 30 layers, 9 heads, 3 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def tensor_bytes(*models: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers held by ``models`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for model in models:
        for tensor in [*model.parameters(), *model.buffers()]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(name: str) -> dict:
    """Build the models of one variant, run one training step, and report its memory."""
    from alignkit.peft import adapters_disabled, apply_adapter, count_parameters

    baseline = peak_rss_mb()  # after imports
    adapter, reference_kind = VARIANTS[name]
    policy = gpt2_small()
    reference = None
    if reference_kind == "copy":
        reference = copy.deepcopy(policy).requires_grad_(False)
    if adapter is not None:
        apply_adapter(policy, adapter)
    held = tensor_bytes(policy) + (tensor_bytes(reference) if reference is not None else 0)

    ids = torch.randint(0, policy.config.vocab_size, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    optim = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    with torch.no_grad():
        if reference is None:
            with adapters_disabled(policy):
                policy(ids)
        else:
            reference(ids)
    loss = policy(input_ids=ids, labels=ids).loss
    loss.backward()
    optim.step()
    trainable, total = count_parameters(policy)
    return {
        "variant": name,
        "parameter_mib": held / 2**20,
        "trainable": trainable,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mb(),
    }


def measure_in_subprocess(name: str) -> dict:
    """Run one variant in a fresh interpreter so that peak RSS belongs to it alone."""
    out = subprocess.run(
        [sys.executable, __file__, "--variant", name], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def trainable_counts() -> list[tuple[str, str, int, int]]:
    """(model, adapter, trainable, total) for every adapter kind on both model shapes."""
    from alignkit.peft import apply_adapter, count_parameters

    rows = []
    for model_name, build in (("GPT-2 small", gpt2_small), ("SmolLM2-135M shape", smollm2_135m_shape)):
        base = build()
        rows.append((model_name, "none (full fine-tuning)", *count_parameters(base)))
        for adapter_name, cfg in ADAPTERS.items():
            model = apply_adapter(copy.deepcopy(base), cfg)
            rows.append((model_name, adapter_name, *count_parameters(model)))
    return rows


def memory_table(results: list[dict]) -> str:
    lines = [
        "| variant | trainable params | params held (MiB) | peak RSS (MiB) | peak RSS over imports (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['trainable']:,} | {r['parameter_mib']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['peak_rss_mib'] - r['baseline_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def counts_table(rows: list[tuple[str, str, int, int]]) -> str:
    lines = ["| model | adapter | trainable | total | trainable % |", "|---|---|---:|---:|---:|"]
    for model_name, adapter_name, trainable, total in rows:
        lines.append(f"| {model_name} | {adapter_name} | {trainable:,} | {total:,} | {100 * trainable / total:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=list(VARIANTS), help="(internal) measure one variant, print JSON")
    parser.add_argument("--write", type=Path, help="also write the results as markdown to this file")
    args = parser.parse_args()
    if args.variant:
        print(to_json(run_variant(args.variant), indent=None))
        return

    results = [measure_in_subprocess(name) for name in VARIANTS]
    report = "\n\n".join(
        [
            f"Machine: {machine_summary()}, torch {torch.__version__}",
            f"GPT-2 small (124M, fp32), one training step on a batch of {BATCH} x {LENGTH} tokens, "
            "one fresh process per variant:",
            memory_table(results),
            "Trainable parameters with each adapter's defaults:",
            counts_table(trainable_counts()),
        ]
    )
    print(report + "\n\n" + NOTES)
    if args.write:
        args.write.write_text(f"# Adapter-off reference: measured memory\n\n{report}\n\n{NOTES}\n")


if __name__ == "__main__":
    main()
