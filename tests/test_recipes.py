"""Recipes: every shipped recipe validates; errors name the YAML path and line; overrides work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.recipe import RecipeError, apply_overrides, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    from alignkit.recipe.online import is_online_recipe, load_online_recipe

    if is_online_recipe(path):
        assert load_online_recipe(path).online
        return
    recipe = load_recipe(path)
    assert recipe.objective().terms


def test_there_are_recipes():
    assert any(p.stem == "dpo_gpt2_hh" for p in RECIPES)


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASE = """name: t
model:
  name_or_path: gpt2
data:
  source:
    kind: jsonl
    path: pairs.jsonl
loss:
  name: dpo
  beta: 0.1
"""


def test_unknown_key_is_reported_with_path_and_line(tmp_path):
    path = _write(tmp_path, BASE + "train:\n  lr: 1e-5\n  max_stpes: 3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:13: train.max_stpes: Extra inputs are not permitted" in str(err.value)


def test_loss_parameter_errors_name_the_parameter(tmp_path):
    path = _write(tmp_path, BASE.replace("beta: 0.1", "beta: -1\n  bta: 2"))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    assert f"{path}:10: loss.beta: Input should be greater than 0" in text
    assert "loss.bta: unknown parameter of loss 'dpo'" in text


def test_unknown_loss_lists_registered_ones(tmp_path):
    with pytest.raises(RecipeError, match="unknown loss 'dpoo'; registered: .*simpo"):
        load_recipe(_write(tmp_path, BASE), ["loss.name=dpoo"])


def test_overrides_set_nested_values_and_swap_objective(tmp_path):
    recipe = load_recipe(_write(tmp_path, BASE), ["loss.beta=0.3", "train.max_steps=50", "loss.name=simpo"])
    assert recipe.loss == {"name": "simpo"}
    assert recipe.train.max_steps == 50
    recipe = load_recipe(_write(tmp_path, BASE), ["loss.beta=0.3"])
    assert recipe.objective().terms[0].config.beta == 0.3


def test_override_indexes_a_loss_list():
    data = {"loss": [{"name": "dpo"}, {"name": "sft", "weight": 1.0}]}
    apply_overrides(data, ["loss[1].weight=0.1", "loss.0.beta=0.2"])
    assert data["loss"] == [{"name": "dpo", "beta": 0.2}, {"name": "sft", "weight": 0.1}]
    with pytest.raises(RecipeError, match="no index 5"):
        apply_overrides(data, ["loss[5]=1"])
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_overrides(data, ["loss.beta"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = _write(tmp_path, BASE + "train:\n  lr: -1\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "Traceback" not in err
    assert main(["validate", str(_write(tmp_path, BASE))]) == 0


def test_cli_lists_losses(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in ("dpo", "ipo", "slic_hf", "simpo", "orpo", "reward_bt", "reward_kway"):
        assert name in out


# ---------------------------------------------------------------------------------------------------------
# The objective is built once, by validation, with structured error locations


def test_validation_builds_the_objective_once_and_keeps_it(tmp_path, monkeypatch):
    import alignkit.recipe as recipe_module

    calls = []
    real = recipe_module.build_objective
    monkeypatch.setattr(recipe_module, "build_objective", lambda *a, **k: calls.append(a) or real(*a, **k))
    recipe = load_recipe(_write(tmp_path, BASE))
    assert len(calls) == 1
    assert recipe.objective() is recipe.objective() and len(calls) == 1
    assert recipe.objective().terms[0].config.beta == 0.1


def test_objective_errors_carry_their_locations():
    from alignkit.losses import ObjectiveError, build_objective

    with pytest.raises(ObjectiveError) as err:
        build_objective([{"name": "sft"}, {"name": "dpo", "beta": 0, "bta": 1}, {"name": "nope"}])
    locs = [loc for loc, _ in err.value.problems]
    assert locs == [("loss", 1, "beta"), ("loss", 1, "bta"), ("loss", 2, "name")]
    assert str(err.value).splitlines()[0] == "loss[1].beta: Input should be greater than 0"


def test_recipe_errors_place_every_loss_problem_on_its_line(tmp_path):
    text = BASE.replace("loss:\n  name: dpo\n  beta: 0.1\n", "loss:\n  - name: sft\n  - name: dpo\n    beta: 0\n")
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError, match=re.escape(f"{path}:11: loss[1].beta: Input should be greater than 0")):
        load_recipe(path)


# ---------------------------------------------------------------------------------------------------------
# Rules between sections: caught by `alignkit validate`, before any model is loaded


def _cross_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    return [
        (["data.source={kind: kway_jsonl, path: k.jsonl}"], "data.source.kind: 'kway_jsonl' gives K-way comparisons"),
        (["loss.name=reward_kway"], "data.source.kind: 'jsonl' gives pairs, which only a loss reading logps or scores reads"),
        (["loss.name=reward_kway"], "loss reward_kway reads kway (K-way comparisons): use a source that gives them "
         "(kway_jsonl)"),
        (["reference.mode=none"], "reference.mode: 'none', but loss dpo needs a reference"),
        (["reference.mode=adapters_off", "loss.name=simpo"], "reference.mode: 'adapters_off' uses the policy with"),
        (["adapter.kind=lora", "reference.mode=adapters_off", "sft.enabled=true"],
         "reference.mode: 'adapters_off' uses the base model under the adapter, but the reference of an SFT run is "
         "the SFT model (sft.enabled is true, and the SFT stage trains the adapter); use copy or cached"),
        (["eval.reward=nosuch"], "eval.reward: unknown reward function 'nosuch'; registered:"),
        (["eval.judge={kind: reward, reward: nosuch}"], "eval.judge.reward: unknown reward function 'nosuch'"),
        (["data.source={kind: sentiment, reward: nosuch}"], "data.source.reward: unknown reward function 'nosuch'"),
        (["train.early_stopping.metric=eval/bogus"], "train.early_stopping.metric: 'eval/bogus' is never logged"),
        (["train.early_stopping.metric=loss"], "'loss' is never logged (did you mean 'eval/loss'?)"),
        (["sft.enabled=true", "sft.early_stopping.metric=eval/rewards/margins"],
         "sft.early_stopping.metric: 'eval/rewards/margins' is never logged"),
        (["train.early_stopping.metric=eval/loss", "data.test_size=0"], "train.early_stopping: needs held-out pairs"),
        (["model.from_config={model_type: gpt2, nlayer: 2}"],
         "model.from_config.nlayer: not a setting of GPT2Config (model_type 'gpt2'); did you mean n_layer?"),
        (["model.from_config={model_type: gtp2}"], "model.from_config.model_type: 'gtp2' is not a transformers model"),
        (["model.from_config={model_type: gpt2, n_embd: 15, n_head: 2}"], "cannot build a 'gpt2' model"),
        (["model.from_config={model_type: gpt2, n_positions: 64}", "data.max_length=128", "data.max_prompt_length=16"],
         "data.max_length: 128 is more than the model's 64 positions"),
        (["train.device=banana"], "train.device: 'banana' is not a device"),
        ([f"output_dir={a_file}"], f"output_dir: {a_file} exists and is not a folder"),
        (["output_dir=/dev/null/run"], "output_dir: /dev/null/run cannot be created: /dev/null is not a folder"),
        (["name=x", "output_dir=null", "train.device=cuda:99"], "train.device: 'cuda:99', but this machine has"),
    ]


def test_every_cross_section_rule_is_a_validation_error(tmp_path):
    for overrides, message in _cross_cases(tmp_path):
        with pytest.raises(RecipeError) as err:
            load_recipe(_write(tmp_path, BASE), overrides)
        assert message in str(err.value), (overrides, str(err.value))


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs/run", "..", ".", "", "a\\b"])
def test_a_name_that_is_not_a_folder_name_is_refused(tmp_path, name):
    # The default run folder runs/<name> must lie inside runs/; output_dir is the way to choose any folder.
    with pytest.raises(RecipeError, match=r"name: .* is not a plain folder name"):
        load_recipe(_write(tmp_path, BASE), [f"name={name!r}"])
    assert load_recipe(_write(tmp_path, BASE), ["name=ok.v2_run-1", f"output_dir={tmp_path / 'x' / '..' / 'y'}"])


def test_cuda_without_cuda_is_a_validation_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RecipeError, match="train.device: 'cuda', but this machine has no CUDA device"):
        load_recipe(_write(tmp_path, BASE), ["train.device=cuda"])


@pytest.mark.parametrize("overrides", [
    ["train.early_stopping.metric=eval/rewards/accuracies"],
    ["loss=[{name: dpo}, {name: sft, weight: 0.1}]", "train.early_stopping.metric=eval/sft/loss"],
    ["loss.name=cpo", "train.early_stopping.metric=eval/nll"],
    ["loss.name=reward_kway", "data.source={kind: kway_jsonl, path: k.jsonl}", "reference.mode=none",
     "train.early_stopping={metric: eval/rewards/accuracies, mode: max}"],
    ["adapter.kind=lora", "reference.mode=adapters_off", "eval.judge={kind: reward, reward: vader_sentiment}"],
    ["loss.reference_free=true", "reference.mode=none"],  # reference-free DPO needs no reference model
    ["data.prompt_truncation=when_needed"],
    ["model.from_config={model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
     "num_attention_heads: 4, num_key_value_heads: 2, rope_theta: 500000.0}"],
])
def test_consistent_recipes_pass_the_cross_section_rules(tmp_path, overrides):
    load_recipe(_write(tmp_path, BASE), overrides)


def test_a_reference_mode_the_objective_does_not_use_is_a_note_not_an_error(tmp_path, capsys):
    """One recipe often serves several objectives, so a reference.mode set for DPO stays valid under a
    reference-free loss; validation and the run say that it is not used."""
    from alignkit.recipe.rules import unused_reference_note

    path = _write(tmp_path, BASE)
    assert unused_reference_note(load_recipe(path, ["loss.reference_free=true"])) is None  # mode not set
    assert unused_reference_note(load_recipe(path, ["reference.mode=cached"])) is None  # dpo reads it
    note = unused_reference_note(load_recipe(path, ["loss.reference_free=true", "reference.mode=cached"]))
    assert note is not None and note.startswith(
        "reference.mode 'cached' is not used for training: loss dpo(reference_free=True) reads no reference")
    assert main(["validate", str(path), "loss.name=simpo", "reference.mode=copy"]) == 0
    assert "note:reference.mode'copy'isnotusedfortraining:losssimpo" in re.sub(r"\s+", "", capsys.readouterr().out)


def test_bad_truncation_and_variant_settings_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"data.prompt_truncation: Input should be 'always' or 'when_needed'"):
        load_recipe(_write(tmp_path, BASE), ["data.prompt_truncation=sometimes"])
    with pytest.raises(RecipeError, match=r"loss: label_smoothing \(0.1\) applies to loss_type 'sigmoid' only"):
        load_recipe(_write(tmp_path, BASE), ["loss={name: simpo, loss_type: hinge, label_smoothing: 0.1}"])


def test_validate_names_the_plugin_files_it_imported(tmp_path, capsys):
    plugin = Path(__file__).resolve().parents[1] / "examples" / "my_losses.py"
    assert main(["validate", str(_write(tmp_path, BASE)), "--plugin", str(plugin)]) == 0
    assert f"importedplugins:{plugin}" in re.sub(r"\s+", "", capsys.readouterr().out)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["loss.beta=-1"], "override loss.beta: loss.beta: Input should be greater than 0"),
    (["train.nosuch=1"], "override train.nosuch: train.nosuch: Extra inputs are not permitted"),
    (["adapter.kind=lora", "adapter.r=-2"], "override adapter.r: adapter.r: Input should be greater than 0"),
    (["loss.name=ipo", "loss.tau=-1"], "override loss.tau: loss.tau:"),
])
def test_an_error_an_override_causes_names_the_override_not_a_line_of_the_file(overrides, expected, capsys):
    """The file's own line of loss.beta (or of the section) holds nothing wrong: the message names the
    override, and no `recipe.yaml:N:` location."""
    assert main(["validate", "recipes/dpo_smollm2_sentiment.yaml", *overrides]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err
    assert "dpo_smollm2_sentiment.yaml:" not in err.replace("dpo_smollm2_sentiment.yaml: 1 problem", "")


GRPO = "recipes/online/grpo_smollm2_sentiment.yaml"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["online.policy_loss={name: ppo_clip, clip_low: -1}"],
     "override online.policy_loss: online.policy_loss.clip_low: Input should be greater than 0 (ppo_clip)"),
    (["online.policy_loss.clip_low=-1"], "override online.policy_loss.clip_low: online.policy_loss.name: Field required"),
    (["online.advantage={name: zzz}"], "override online.advantage: online.advantage.name: unknown advantage estimator 'zzz'"),
    (["online.kl.estimator=k9"], "override online.kl.estimator: online.kl.estimator: unknown KL estimator 'k9'"),
    (["online.loss_aggregation={name: token_mean, nosuch: 1}"],
     "override online.loss_aggregation: online.loss_aggregation.nosuch: Extra inputs are not permitted (token_mean)"),
])
def test_an_override_invalid_inside_an_online_part_names_the_override(overrides, expected, capsys):
    """Before: the part's settings were checked by the online section's validator, so the error was placed at
    the file's `online:` line (`grpo_smollm2_sentiment.yaml:30: online: online.policy_loss (ppo_clip): ...`)."""
    assert main(["validate", GRPO, *overrides]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err, err
    assert "grpo_smollm2_sentiment.yaml:" not in err.replace("grpo_smollm2_sentiment.yaml: 1 problem", "")


def test_a_part_error_in_the_file_names_its_own_line(tmp_path, capsys):
    text = Path(GRPO).read_text().replace("  reward: vader_sentiment\n",
                                          "  reward: vader_sentiment\n  policy_loss:\n    name: ppo_clip\n"
                                          "    clip_low: -1\n", 1)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    line = text.splitlines().index("    clip_low: -1") + 1
    assert main(["validate", str(recipe)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"r.yaml:{line}: online.policy_loss.clip_low: Input should be greater than 0 (ppo_clip)" in err, err


def test_a_file_error_keeps_its_line_next_to_an_override(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    text = Path("recipes/dpo_smollm2_sentiment.yaml").read_text().replace("  lr: 5.0e-4", "  lr: -5.0e-4")
    recipe.write_text(text)
    line = text.splitlines().index("  lr: -5.0e-4") + 1
    assert main(["validate", str(recipe), "loss.beta=-1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"r.yaml:{line}: train.lr:" in err and "override loss.beta: loss.beta:" in err


def test_validate_says_it_imports_plugins_and_does(tmp_path, capsys):
    """`validate` runs a recipe's plugins (that is how their losses exist); its help and the README say so."""
    marker = tmp_path / "ran"
    (tmp_path / "noisy.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    recipe = _write(tmp_path, BASE + "plugins: [noisy.py]\n")
    assert main(["validate", str(recipe)]) == 0
    assert marker.exists() and "noisy.py" in re.sub(r"\s+", "", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "imports the recipe's plugins" in " ".join(capsys.readouterr().out.split())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("alignkit validate"))
    assert "imports its plugins" in line and "without running it" not in line


def test_online_help_names_every_algorithm_and_what_a_plugin_registers(capsys):
    with pytest.raises(SystemExit):
        main(["online", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from typing import get_args

    from alignkit.online.presets import PresetName

    assert all(f" {name}," in text or f" {name} or" in text for name in get_args(PresetName)), text
    assert "RLOO or WARP" not in text
    assert "losses, reward functions, data sources, judges, online parts" in text


def test_only_the_main_process_prints_progress(monkeypatch):
    from alignkit.cli import _progress_console

    monkeypatch.setenv("RANK", "1")
    assert _progress_console().quiet
    monkeypatch.setenv("RANK", "0")
    assert not _progress_console().quiet


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online"])
def test_run_parses_the_recipe_file_once(tmp_path, monkeypatch, online):
    """`alignkit run` tells an online recipe from an offline one and loads it from one parse of the YAML."""
    import alignkit.recipe
    import alignkit.recipe.online
    import alignkit.recipe.source
    from alignkit.commands.run import run_recipe_file

    parses = []
    real = alignkit.recipe.source.parse_yaml
    for module in (alignkit.recipe.source, alignkit.recipe, alignkit.recipe.online):  # wherever it is imported
        if hasattr(module, "parse_yaml"):
            monkeypatch.setattr(module, "parse_yaml", lambda text, what: parses.append(what) or real(text, what))
    text = ("name: t\nmodel: {name_or_path: gpt2}\nonline: {reward: length}\n"
            "prompts: {kind: inline, train: [a], eval: [b]}\n") if online else BASE
    # A device this machine lacks stops the run at validation, after the file was read.
    with pytest.raises(RecipeError, match="'banana' is not a device"):
        run_recipe_file(str(_write(tmp_path, text)), ["train.device=banana"])
    path = str(tmp_path / "r.yaml")
    assert [what for what in parses if not what.startswith("override")] == [path]
