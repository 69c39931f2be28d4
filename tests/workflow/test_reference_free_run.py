"""A reference-free DPO run: no reference model for training (a reference.mode set in the recipe is noted, not
used), and report.json says how the length limits cut the pairs."""

from __future__ import annotations

import json
from pathlib import Path

from workflow_recipes import tiny_jsonl_recipe

from alignkit.cache import cache_dir
from alignkit.cli import main


def test_reference_free_dpo_loads_no_reference_and_reports_truncation(tmp_path: Path, capsys) -> None:
    recipe = tiny_jsonl_recipe(tmp_path)
    overrides = ["loss={name: dpo, beta: 0.1, reference_free: true}", "reference.mode=cached",
                 "data.prompt_truncation=when_needed", "data.max_length=10", "data.max_prompt_length=2"]
    cached_before = set(cache_dir("reference_logps").glob("*.safetensors"))  # the cache is shared by the session
    assert main(["run", str(recipe), *overrides]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "reference.mode 'cached' is not used for training: loss dpo(reference_free=True)" in err
    # mode cached with a loss that reads a reference would have written its log-probs here
    assert set(cache_dir("reference_logps").glob("*.safetensors")) == cached_before
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["objective"] == "dpo(reference_free=True)"
    truncation = report["truncation"]
    assert truncation["prompt_truncation"] == "when_needed"
    # "Question i?" is 3 GPT-2 tokens, " A helpful answer i." + EOS 6: 9 fit in max_length 10, so no prompt is
    # cut to max_prompt_length 2 (prompt_truncation 'always' would cut all of them).
    assert truncation["train"] == {"kept": 8, "prompt_cut": 0, "response_cut": 0, "dropped": {}}
    assert truncation["heldout"] == {"kept": 4, "prompt_cut": 0, "response_cut": 0, "dropped": {}}
