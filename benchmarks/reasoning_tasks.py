"""Which reasoning-gym task suits the SmolLM2 GRPO recipe: the untuned model's pass@1 and pass@8 per task.

A task is a good choice when pass@1 is between 5% and 60% (the reward has signal from the first step and room to
rise) and pass@8 is clearly higher (sampling sometimes finds the answer, so group-relative updates can learn
it). For each task: the held-out problems of ``prompts.kind: reasoning_gym`` (the recipe's source, seed 0), n
samples each from SmolLM2-135M-Instruct, scored by the task's own scorer (reward ``reasoning_gym``).

Usage::

    nice -n 10 python benchmarks/reasoning_tasks.py --problems 50 --samples 8 --out benchmarks/results/reasoning_tasks.json

Writes the figures with the machine's CPU and the wall time of each task.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from alignkit.data.prompt_sources import load_prompt_split
from alignkit.eval.accuracy import evaluate_accuracy
from alignkit.jsonio import to_json
from alignkit.models.load import load_tokenizer
from alignkit.models.rewards import resolve_example_reward
from alignkit.models.sampling import Sampling
from alignkit.models.smollm2 import ensure_smollm2
from alignkit.online.verifiable_prompts import ReasoningGymPrompts

# Candidate tasks and the settings the recipe would use (easy enough for a 135M model to solve sometimes).
TASKS: dict[str, dict] = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1},
    "leg_counting": {"min_animals": 1, "max_animals": 2, "max_instances": 2},
    "simple_equations": {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 10},
}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo), for the figures."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--extract", default="tags", help="where the reward reads the answer (tags, last_number...)")
    parser.add_argument("--instruction", default=None, help="appended to every problem; default: the source's")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    folder = ensure_smollm2()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    from alignkit.models.config import ModelConfig

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    _, score = resolve_example_reward("reasoning_gym", settings={"extract": args.extract})
    results = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "model": "SmolLM2-135M-Instruct (fp32)",
               "problems": args.problems, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
               "temperature": args.temperature, "extract": args.extract, "tasks": {}}
    for task in args.tasks.split(","):
        own = {"instruction": args.instruction} if args.instruction is not None else {}
        cfg = ReasoningGymPrompts(kind="reasoning_gym", task=task, config=TASKS.get(task, {}),
                                  num_prompts=10, num_eval_prompts=args.problems, **own)
        split = load_prompt_split(cfg, tokenizer)
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            samples_per_prompt=args.samples, batch_size=64, seed=1234)
        start = time.perf_counter()
        with torch.inference_mode():
            out = evaluate_accuracy(model, tokenizer, split.eval, split.metadata, score, sampling, ks=[1, args.samples],
                                    label=task)
        out["config"] = TASKS.get(task, {})
        out["wall_seconds"] = time.perf_counter() - start
        results["tasks"][task] = out
        p1, pk = out["pass_at"]["1"], out["pass_at"][str(args.samples)]
        print(f"{task}: pass@1 {100 * p1['estimate']:.1f}% [{100 * p1['low']:.1f}, {100 * p1['high']:.1f}]  "
              f"pass@{args.samples} {100 * pk['estimate']:.1f}% [{100 * pk['low']:.1f}, {100 * pk['high']:.1f}]  "
              f"({out['wall_seconds']:.0f} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(to_json(results) + "\n")


if __name__ == "__main__":
    main()
