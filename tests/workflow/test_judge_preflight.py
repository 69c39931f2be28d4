"""A judge whose API-key variable is not set stops a run before any model is loaded, not after training."""

from __future__ import annotations

import re

import pytest
from workflow_recipes import tiny_jsonl_recipe

from alignkit.cli import main
from alignkit.workflow.skeleton import RecipeRun

UNSET = "ALIGNKIT_TEST_UNSET_JUDGE_KEY"
JUDGE = f"eval={{judge: {{kind: openai, base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: {UNSET}}}}}"


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a policy fails the test: the check must come first."""
    monkeypatch.delenv(UNSET, raising=False)

    def refuse(self, device):
        raise AssertionError("a model was loaded before the judge's key was checked")

    monkeypatch.setattr(RecipeRun, "load_causal_lm", refuse)


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert f"eval.judge.api_key_env names the environment variable '{UNSET}', which is not set" in err, err
    assert "Traceback" not in err
    return err


def test_run_refuses_an_unset_judge_key_before_loading_the_model(tmp_path, capsys, no_model_loads):
    _refused(capsys, ["run", str(tiny_jsonl_recipe(tmp_path)), JUDGE])
    assert not (tmp_path / "run").exists()  # no folder claimed, no checkpoint written


def test_online_refuses_an_unset_judge_key_before_loading_the_model(tmp_path, capsys, no_model_loads):
    recipe = tmp_path / "online.yaml"
    recipe.write_text(f"""name: t
output_dir: {tmp_path / "run"}
model:
  name_or_path: tiny
  from_config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2}}
  tokenizer: gpt2
prompts: {{kind: inline, train: [a, b], eval: [c]}}
online: {{reward: vader_sentiment}}
train: {{device: cpu}}
""")
    _refused(capsys, ["online", str(recipe), JUDGE])
    assert not (tmp_path / "run").exists()


def test_a_set_key_passes_the_check(monkeypatch):
    from alignkit.eval.config import OpenAIJudgeConfig
    from alignkit.eval.judges.keys import check_judge_environment

    judge = OpenAIJudgeConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m", api_key_env=UNSET)
    monkeypatch.setenv(UNSET, "sk-secret-value")
    check_judge_environment(judge)
    check_judge_environment(judge.model_copy(update={"api_key_env": None}))
    check_judge_environment(None)


def test_eval_refuses_an_unset_judge_key_before_loading_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(UNSET, raising=False)
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)  # a finished run folder, as far as the command looks before loading
    (run_dir / "recipe.yaml").write_text(tiny_jsonl_recipe(tmp_path).read_text())

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the judge's key was checked")

    monkeypatch.setattr("alignkit.commands.eval.load_run_model", refuse)
    _refused(capsys, ["eval", str(run_dir), JUDGE])
