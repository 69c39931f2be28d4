"""A new user's HH experiment end to end on tiny models: SFT, then DPO with a bottleneck adapter; the tuned
policy judged against the chosen responses, the untuned model and the SFT reference; a second `alignkit eval`
adds its sections to the report and erases none."""

from __future__ import annotations

import json

from conftest import make_tiny_gpt2

from alignkit.cli import main

TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 256}"


def test_baselines_judge_checks_and_added_sections(tmp_path, hh_path, gpt2_tokenizer):
    out = tmp_path / "run"
    short = ["batch_size=4", "grad_accum=1", "max_steps=1", "warmup_steps=0", "eval_every=null"]
    args = [f"output_dir={out}", f"model.from_config={TINY_GPT2}", "model.tokenizer=gpt2",
            f"data.source.path={hh_path}", f"data.test_source.path={hh_path}", "data.max_examples=16",
            "data.max_length=64", "data.max_prompt_length=48", "adapter.kind=bottleneck",
            *[f"sft.{a}" for a in short], *[f"train.{a}" for a in short], "train.save_every=null",
            "eval.num_prompts=3", "eval.max_new_tokens=4", "eval.batch_size=4", "eval.agreement_pairs=4"]
    assert main(["run", "recipes/dpo_gpt2_hh.yaml", *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "judged" not in report  # the recipe names baselines but no judge

    reward = ["eval.judge.kind=reward", "eval.judge.reward=vader_sentiment", "eval.baselines=[chosen, base, reference]"]
    assert main(["eval", str(out), *reward]) == 0
    (first,) = json.loads((out / "report.json").read_text())["judged"]
    assert [s["baseline"] for s in first["baselines"]] == ["chosen", "base", "reference"]
    assert all(s["n"] == 3 for s in first["baselines"])
    assert first["agreement"]["n"] == 4 and 0 <= first["agreement"]["agreement"]["estimate"] <= 1
    assert set(first["position_bias"]) >= {"flip_rate", "first_position_rate", "same_verdict_rate"}
    rows = [json.loads(line) for line in (out / "judged_pairs.jsonl").read_text().splitlines()]
    assert [r["against"] for r in rows].count("agreement") == 4 and len(rows) == 4 + 3 * 3
    # With the adapter, the untuned model is the policy with its adapter off; the reference is the SFT model.
    by_baseline = {name: [r["baseline"] for r in rows if r["against"] == name] for name in ("base", "reference")}
    assert len(by_baseline["base"]) == len(by_baseline["reference"]) == 3

    judge_folder = tmp_path / "judge"
    make_tiny_gpt2(seed=3).save_pretrained(judge_folder)
    gpt2_tokenizer.save_pretrained(judge_folder)
    local = [f"eval.judge={{kind: local, model: {judge_folder}, max_flip_rate: 0.0}}", "eval.baselines=[chosen]"]
    assert main(["eval", str(out), *local]) == 0
    report = json.loads((out / "report.json").read_text())
    first_again, second = report["judged"]
    assert first_again == first  # the first evaluation is kept as it was
    assert second["evaluation"] == 2 and second["pair_rule"] == "mean_probability"
    assert second["judge"]["name"] == "local" and [s["baseline"] for s in second["baselines"]] == ["chosen"]
    flips = second["position_bias"]["flip_rate"]
    assert (flips > 0) == any("position-biased" in w for w in second["warnings"])  # max_flip_rate 0: any flip warns
    md = (out / "report.md").read_text()
    for heading in ("policy vs chosen (evaluation 1)", "policy vs base (evaluation 1)",
                    "policy vs reference (evaluation 1)", "policy vs chosen (evaluation 2)",
                    "## Judge check (evaluation 1)", "## Judge check (evaluation 2)"):
        assert heading in md
    win_rate_rows = [line for line in md.splitlines() if line.startswith("| win rate vs")]
    assert len(win_rate_rows) == 4 and all(line.split("|")[2].strip() == "" for line in win_rate_rows)  # no "before"
    assert (out / "plots" / "win_rate.png").is_file()
