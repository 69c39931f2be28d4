"""Prompt sources of verifiable tasks: GSM8K-format jsonl and reasoning-gym tasks, each prompt with its reference
answer; held-out prompts never among the training prompts; the registry that chooses a source by kind."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from alignkit.data.prompt_sources import PROMPT_SOURCES, load_prompt_split, register_prompt_source
from alignkit.data.prompts import IN_HELDOUT, PromptSplit
from alignkit.data.types import DataError
from alignkit.online.config import PromptsConfig

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k_sample.jsonl"
TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}" \
           "{% if add_generation_prompt %}<|assistant|>{% endif %}"


def _cfg(**kw):
    return TypeAdapter(PromptsConfig).validate_python(kw)


@pytest.fixture
def chat_tokenizer(gpt2_tokenizer):
    tok = copy.deepcopy(gpt2_tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def test_gsm8k_fixture_carries_each_reference_answer(gpt2_tokenizer):
    split = load_prompt_split(_cfg(kind="gsm8k_jsonl", path=str(FIXTURE), test_size=3, instruction=""),
                              gpt2_tokenizer)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    assert len(split.train) == 9 and len(split.eval) == 3 and not set(split.train) & set(split.eval)
    # No chat template: the prompt reaches the sampler as plain text, the question itself.
    by_question = {r["question"]: r["answer"].rsplit("####", 1)[1].strip() for r in rows}
    for prompt in split.train + split.eval:
        assert split.metadata[prompt] == {"answer": by_question[prompt.strip()]}
    assert split.metadata[rows[10]["question"]]["answer"] == "1,625"


def test_gsm8k_keys_metadata_by_the_prompt_the_sampler_receives(tmp_path, chat_tokenizer):
    split = load_prompt_split(_cfg(kind="gsm8k_jsonl", path=str(FIXTURE), test_size=2), chat_tokenizer)
    assert set(split.metadata) == set(split.train + split.eval)
    assert all(p.endswith("as '#### <number>'.") for p in split.metadata)


def test_gsm8k_rows_without_an_answer_are_counted_with_their_line(tmp_path, gpt2_tokenizer):
    path = tmp_path / "g.jsonl"
    rows = [{"question": "A?", "answer": "so #### 1"}, {"question": "B?", "answer": "no marker"},
            {"question": "", "answer": "#### 2"}, {"question": "C?", "answer": "#### 3\n#### 4"},
            {"question": "D?", "answer": "#### 5"}, {"question": "E?", "answer": "#### 6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = load_prompt_split(_cfg(kind="gsm8k_jsonl", path=str(path), test_size=1, instruction=""), gpt2_tokenizer)
    summary = split.train_report.summary()
    assert "g.jsonl:2" in summary and "g.jsonl:3" in summary and "g.jsonl:4" in summary
    assert len(split.train) + len(split.eval) == 3
    with pytest.raises(DataError, match="prompts.path"):
        load_prompt_split(_cfg(kind="gsm8k_jsonl", path=str(tmp_path / "missing.jsonl")), gpt2_tokenizer)


def test_gsm8k_separate_held_out_file_is_never_trained_on(tmp_path, gpt2_tokenizer):
    held = tmp_path / "test.jsonl"
    held.write_text("".join(FIXTURE.read_text().splitlines(keepends=True)[:4]))
    split = load_prompt_split(_cfg(kind="gsm8k_jsonl", path=str(FIXTURE), eval_path=str(held), instruction=""),
                              gpt2_tokenizer)
    assert len(split.eval) == 4 and len(split.train) == 8 and not set(split.train) & set(split.eval)
    assert split.train_report.reasons[IN_HELDOUT] == 4


def test_reasoning_gym_held_out_never_overlaps_training(gpt2_tokenizer):
    pytest.importorskip("reasoning_gym")
    # One-digit sums of two terms repeat often, so the generator gives problems that are also held out.
    cfg = _cfg(kind="reasoning_gym", task="basic_arithmetic", num_prompts=300, num_eval_prompts=50, seed=3,
               config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, instruction="")
    split = load_prompt_split(cfg, gpt2_tokenizer)
    assert split.eval and split.train and not set(split.train) & set(split.eval)
    assert split.train_report.reasons[IN_HELDOUT] > 0  # repeats of held-out problems were found and dropped
    for prompt in split.train + split.eval:
        meta = split.metadata[prompt]
        assert meta["rg_task"] == "basic_arithmetic" and meta["rg_config"]["seed"] == 3
    # The same configuration gives the same problems.
    assert load_prompt_split(cfg, gpt2_tokenizer).eval == split.eval


def test_reasoning_gym_holds_out_as_many_distinct_problems_as_asked_without_moving_the_rest(gpt2_tokenizer):
    """The shipped recipe's task repeats: 200 generated held-out problems are 172 distinct. Repeats are replaced
    by problems generated after the training ones, so the first held-out and all training problems stay."""
    pytest.importorskip("reasoning_gym")
    from alignkit.models.verifiable import reasoning_gym_task

    config = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}
    cfg = _cfg(kind="reasoning_gym", task="chain_sum", num_prompts=100, num_eval_prompts=200, seed=0,
               config=config, instruction="")
    split = load_prompt_split(cfg, gpt2_tokenizer)
    assert len(split.eval) == len(set(split.eval)) == 200 and not set(split.train) & set(split.eval)
    first = [p for i, p in enumerate(split.eval) if split.metadata[p]["rg_index"] < 200]
    assert len(first) == 172 and split.eval[:172] == first  # the seed's own held-out problems come first
    assert all(split.metadata[p]["rg_index"] >= 300 for p in split.eval[172:])  # after the training ones
    assert all(split.metadata[p]["rg_index"] in range(200, 300) for p in split.train)
    for prompt in split.eval[170:]:  # each topped-up problem is the item its reward rebuilds
        _, item = reasoning_gym_task(split.metadata[prompt])
        assert prompt.endswith(item["question"]) and split.metadata[prompt]["answer"] == str(item["answer"])
    # A task with fewer distinct problems than asked for holds out what there is, and says so.
    tiny = _cfg(kind="reasoning_gym", task="chain_sum", num_prompts=20, num_eval_prompts=400, seed=3,
                config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, instruction="")
    small = load_prompt_split(tiny, gpt2_tokenizer)
    assert len(small.eval) < 400 and any("no more distinct problems" in r for r in small.eval_report.reasons)


def test_reasoning_gym_unknown_task_and_refused_config_are_data_errors(gpt2_tokenizer):
    pytest.importorskip("reasoning_gym")
    with pytest.raises(DataError, match="unknown reasoning-gym task 'no_such_task'; known: .*basic_arithmetic"):
        load_prompt_split(_cfg(kind="reasoning_gym", task="no_such_task"), gpt2_tokenizer)
    with pytest.raises(DataError, match="prompts.config"):
        load_prompt_split(_cfg(kind="reasoning_gym", task="basic_arithmetic", config={"min_terms": 9, "max_terms": 2}),
                          gpt2_tokenizer)
    with pytest.raises(ValidationError, match="set seed with prompts.num_prompts / prompts.seed"):
        _cfg(kind="reasoning_gym", task="basic_arithmetic", config={"seed": 1})


def test_missing_extra_is_a_one_line_exit_2_naming_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name_or_path: gpt2, tokenizer: gpt2}\n"
                      "prompts: {kind: reasoning_gym, task: chain_sum}\nonline: {reward: reasoning_gym}\n"
                      "train: {max_steps: 1}\n")
    # reasoning_gym blocked as if it were not installed (None in sys.modules makes its import fail).
    code = ("import sys; sys.modules['reasoning_gym'] = None; from alignkit.cli import main; "
            f"sys.exit(main(['validate', {str(recipe)!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "pip install 'alignkit[reasoning]'" in out.stderr and "Traceback" not in out.stderr


def test_a_registered_prompt_source_is_chosen_by_its_kind():
    class Mine:
        kind = "two_sums"

    if "two_sums" not in PROMPT_SOURCES:
        @register_prompt_source("two_sums")
        def two_sums(cfg, tokenizer) -> PromptSplit:
            return PromptSplit(["1+1?"], ["2+2?"], metadata={"1+1?": {"answer": "2"}, "2+2?": {"answer": "4"}})

    split = load_prompt_split(Mine(), None)
    assert split.train == ["1+1?"] and split.metadata["2+2?"] == {"answer": "4"}
