"""Prompts from data for online recipes (kinds jsonl, hh_rlhf, hf_dataset): bad rows counted, chat templates as
offline, the seeded split, caps, de-duplication, and clear errors. Nothing downloads: every file is local."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from alignkit.cli import main
from alignkit.data.prompts import DUPLICATE, EMPTY_PROMPT, IN_HELDOUT, MULTI_MESSAGE, NO_USER_TURN
from alignkit.data.render import render_prompt
from alignkit.data.types import MALFORMED, DataError
from alignkit.models.generate import format_prompt
from alignkit.online.config import PromptsConfig
from alignkit.online.prompts import HFDatasetPrompts, HHRLHFPrompts, JsonlPrompts, load_prompts

# The small template of tests/data/test_data_tokenize.py: each turn closes with EOS; the cue opens the answer.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
QUESTIONS = [f"Question number {i}?" for i in range(20)]


@pytest.fixture(scope="module")
def chat_tokenizer(gpt2_tokenizer):
    tok = copy.deepcopy(gpt2_tokenizer)
    tok.chat_template = TEMPLATE
    return tok


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(**kw) -> JsonlPrompts:
    return TypeAdapter(PromptsConfig).validate_python({"kind": "jsonl", **kw})


BAD_ROWS = [
    {"prompt": "Tell me a joke."},
    {"prompt": "Tell me a joke."},              # duplicate
    "{not json\n",                               # malformed: invalid JSON
    {"other": 1},                                # malformed: neither field
    {"prompt": "   "},                           # empty
    {"prompt": 3},                               # malformed: not text or messages
    {"messages": [{"role": "assistant", "content": "Hi"}]},  # no user turn once the answer is removed
    *({"prompt": q} for q in QUESTIONS[:6]),
]


def test_jsonl_text_prompts_bad_rows_counted_never_raised(tmp_path, gpt2_tokenizer):
    path = _jsonl(tmp_path / "p.jsonl", BAD_ROWS)
    split = load_prompts(_cfg(path=str(path), test_size=2), gpt2_tokenizer)
    report = split.train_report
    assert report.seen == 13
    assert report.reasons[MALFORMED] == 3 and report.reasons[EMPTY_PROMPT] == 1
    assert report.reasons[DUPLICATE] == 1 and report.reasons[NO_USER_TURN] == 1
    assert "p.jsonl:3: invalid JSON" in report.summary() and "p.jsonl:4: missing field 'prompt'" in report.summary()
    assert "p.jsonl:2" in report.locations[DUPLICATE]
    assert len(split.eval) == 2 and len(split.train) == 5
    assert set(split.train) | set(split.eval) == {"Tell me a joke.", *QUESTIONS[:6]}
    assert not set(split.train) & set(split.eval)
    assert report.kept == len(split.train)  # held-out prompts are counted as left out of training
    assert split.eval_report.seen == split.eval_report.kept == 2
    # Without de-duplication the duplicate stays.
    assert load_prompts(_cfg(path=str(path), test_size=2, dedupe=False), gpt2_tokenizer).train_report.kept == 6


def test_jsonl_conversations_render_with_the_chat_template_as_offline(tmp_path, chat_tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": "How do I boil an egg?"},
                      {"role": "assistant", "content": "Six minutes."}]},   # the reference answer is not prompt
        {"prompt": [{"role": "user", "content": "Name a grey cat."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
        {"prompt": "\n\nHuman: Is the sun a star?\n\nAssistant:"},          # HH text: split into turns first
        *({"prompt": q} for q in QUESTIONS[:3]),
    ]
    path = _jsonl(tmp_path / "chat.jsonl.gz", [])
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    split = load_prompts(_cfg(path=str(path), test_size=1, seed=3), chat_tokenizer)
    prompts = split.train + split.eval
    assert set(prompts) == {"How do I boil an egg?", "Name a grey cat.", "Is the sun a star?", *QUESTIONS[:3]}
    assert split.train_report.reasons[MULTI_MESSAGE] == 1 and "chat.jsonl.gz:3" in split.train_report.summary()
    # What the sampler feeds the model is the offline rendering of the conversation, token for token.
    conversation = [{"role": "user", "content": "How do I boil an egg?"}]
    offline = render_prompt(conversation, chat_tokenizer, use_template=True)
    assert offline.startswith("<|user|>\nHow do I boil an egg?") and offline.endswith("<|assistant|>\n")
    assert format_prompt(chat_tokenizer, "How do I boil an egg?", True) == chat_tokenizer(
        offline, add_special_tokens=False)["input_ids"]


def test_conversations_without_a_template_become_plain_dialogue_text(tmp_path, gpt2_tokenizer):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "Bye"}]},
            {"prompt": "plain text stays as it is "}]
    split = load_prompts(_cfg(path=str(_jsonl(tmp_path / "p.jsonl", rows)), test_size=1, seed=0), gpt2_tokenizer)
    assert set(split.train + split.eval) == {
        "\n\nSystem: Be brief.\n\nHuman: Why?\n\nAssistant:",
        "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:",
        "plain text stays as it is ",
    }


def test_the_split_is_seeded(tmp_path, gpt2_tokenizer):
    path = str(_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in QUESTIONS]))

    def held_out(seed: int) -> list[str]:
        return load_prompts(_cfg(path=path, test_size=5, seed=seed), gpt2_tokenizer).eval

    assert held_out(0) == held_out(0)
    assert held_out(0) != held_out(1)
    a = load_prompts(_cfg(path=path, test_size=0.25, seed=7), gpt2_tokenizer)
    assert len(a.eval) == 5 and sorted(a.train + a.eval) == sorted(QUESTIONS)
    assert a.train == [q for q in QUESTIONS if q not in a.eval]  # source order kept


def test_caps_and_a_separate_held_out_file(tmp_path, gpt2_tokenizer):
    path = str(_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in QUESTIONS]))
    capped = load_prompts(_cfg(path=path, test_size=0.5, num_eval_prompts=3, num_prompts=4), gpt2_tokenizer)
    assert len(capped.eval) == 3 and capped.train == [q for q in QUESTIONS if q not in capped.eval][:4]
    assert "beyond prompts.num_prompts (4)" in capped.train_report.summary()

    held = _jsonl(tmp_path / "held.jsonl", [{"prompt": q} for q in ["Fresh one?", QUESTIONS[0], QUESTIONS[1]]])
    split = load_prompts(_cfg(path=path, eval_path=str(held), num_eval_prompts=2), gpt2_tokenizer)
    assert split.eval == ["Fresh one?", QUESTIONS[0]]
    assert split.train == QUESTIONS[1:]  # the held-out prompt is left out of training; test_size is ignored
    assert split.train_report.reasons[IN_HELDOUT] == 1
    assert "beyond prompts.num_eval_prompts (2)" in split.eval_report.summary()


def test_max_prompt_tokens_counts_as_the_sampler_formats(tmp_path, chat_tokenizer):
    rows = [{"prompt": "short"}, {"prompt": "a much longer prompt " * 5}, {"prompt": "tiny"}]
    split = load_prompts(_cfg(path=str(_jsonl(tmp_path / "p.jsonl", rows)), test_size=1, max_prompt_tokens=20),
                         chat_tokenizer)
    assert sorted(split.train + split.eval) == ["short", "tiny"]
    assert split.train_report.reasons["longer than 20 tokens (max_prompt_tokens)"] == 1


def test_hh_rlhf_fixture_prompts(hh_path, gpt2_tokenizer, chat_tokenizer):
    cfg = HHRLHFPrompts(kind="hh_rlhf", path=str(hh_path), num_eval_prompts=8)
    split = load_prompts(cfg, gpt2_tokenizer)
    assert split.train_report.seen == 72 and len(split.eval) == 7 and len(split.train) == 60
    assert all(p.startswith("\n\nHuman:") and p.endswith("\n\nAssistant:") for p in split.train + split.eval)
    assert "chosen and rejected do not share the prompt" in split.train_report.reasons  # the loader's drops

    single = load_prompts(cfg.model_copy(update={"single_turn": True}), gpt2_tokenizer)
    assert all(p.count("\n\nHuman:") == 1 for p in single.train + single.eval)
    # With a chat template each single-turn prompt is the user's question, rendered as one user turn.
    chat = load_prompts(cfg.model_copy(update={"single_turn": True}), chat_tokenizer)
    assert len(chat.train) == len(single.train)
    assert all("Human:" not in p and "Assistant:" not in p for p in chat.train + chat.eval)
    assert "How long should I boil an egg for a runny yolk?" in chat.train + chat.eval


def test_hh_rlhf_held_out_split_from_a_folder(tmp_path, hh_path, gpt2_tokenizer):
    for split in ("train", "test"):
        (tmp_path / "hh" / "harmless-base").mkdir(parents=True, exist_ok=True)
        shutil.copy(hh_path, tmp_path / "hh" / "harmless-base" / f"{split}.jsonl.gz")
    cfg = HHRLHFPrompts(kind="hh_rlhf", path=str(tmp_path / "hh"), eval_split="test", num_eval_prompts=5)
    split = load_prompts(cfg, gpt2_tokenizer)
    assert len(split.eval) == 5 and split.train_report.reasons[IN_HELDOUT] == 5
    assert not set(split.train) & set(split.eval)
    with pytest.raises(DataError, match=r"prompts\.eval_split: .* is one file"):
        load_prompts(cfg.model_copy(update={"path": str(hh_path)}), gpt2_tokenizer)


def test_hf_dataset_prompts_from_disk_and_from_a_local_data_file(tmp_path, gpt2_tokenizer):
    import datasets

    rows = {"prompt": [*QUESTIONS[:8], None, ""], "id": list(range(10))}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    split = load_prompts(HFDatasetPrompts(kind="hf_dataset", name=str(tmp_path / "single"), test_size=2),
                         gpt2_tokenizer)
    assert sorted(split.train + split.eval) == sorted(QUESTIONS[:8]) and len(split.eval) == 2
    assert split.train_report.reasons[MALFORMED] == 1 and split.train_report.reasons[EMPTY_PROMPT] == 1
    assert "row 8: missing field" in split.train_report.summary()

    messages = [[{"role": "user", "content": q}] for q in QUESTIONS[:6]]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"messages": messages}),
        "test": datasets.Dataset.from_dict({"messages": messages[:2]}),
    }).save_to_disk(str(tmp_path / "dict"))
    cfg = HFDatasetPrompts(kind="hf_dataset", name=str(tmp_path / "dict"), eval_split="test")
    split = load_prompts(cfg, gpt2_tokenizer)
    plain = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS[:6]]
    assert split.eval == plain[:2] and split.train == plain[2:]

    data_file = _jsonl(tmp_path / "rows.jsonl", [{"text": q} for q in QUESTIONS[:5]])
    cfg = HFDatasetPrompts(kind="hf_dataset", name="json", data_files=str(data_file), prompt_field="text",
                           test_size=1)
    split = load_prompts(cfg, gpt2_tokenizer)
    assert sorted(split.train + split.eval) == sorted(QUESTIONS[:5])

    with pytest.raises(DataError, match=r"prompts\.prompt_field: .* no column 'question' or 'messages'; columns: "):
        load_prompts(cfg.model_copy(update={"prompt_field": "question"}), gpt2_tokenizer)
    with pytest.raises(DataError, match=r"prompts\.eval_split 'validation' not in"):
        load_prompts(HFDatasetPrompts(kind="hf_dataset", name=str(tmp_path / "dict"), eval_split="validation"),
                     gpt2_tokenizer)
    with pytest.raises(DataError, match=r"prompts\.eval_split: .* single dataset without splits"):
        load_prompts(HFDatasetPrompts(kind="hf_dataset", name=str(tmp_path / "single"), eval_split="test"),
                     gpt2_tokenizer)


def test_configs_are_strict(tmp_path):
    with pytest.raises(ValidationError, match="test_size must be a fraction"):
        _cfg(path="p.jsonl", test_size=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        _cfg(path="p.jsonl", prompt_feld="q")
    with pytest.raises(ValidationError, match="eval_split must differ"):
        HHRLHFPrompts(kind="hh_rlhf", split="test", eval_split="test")
    with pytest.raises(DataError, match=r"prompts: 1 usable prompt\(s\): too few"):
        load_prompts(_cfg(path=str(_jsonl(tmp_path / "one.jsonl", [{"prompt": "only"}]))), None)


RECIPE = """name: prompts_cli
output_dir: {out}
model:
  name_or_path: gpt2
  tokenizer: gpt2
  from_config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}}
prompts:
  kind: jsonl
  path: {path}
online:
  reward: vader_sentiment
train:
  max_steps: 1
  device: cpu
"""


def _online_fails(capsys, tmp_path, path: Path, *needles: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / f"run_{path.stem}", path=path), encoding="utf-8")
    assert main(["online", str(recipe)]) == 2
    err = "".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    for needle in needles:
        assert "".join(needle.split()) in err, err


def test_cli_missing_file_and_missing_field_exit_2(tmp_path, capsys):
    _online_fails(capsys, tmp_path, tmp_path / "nope.jsonl", "prompts.path: file not found", "nope.jsonl")
    wrong = _jsonl(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS[:4]])
    _online_fails(capsys, tmp_path, wrong, "prompts.prompt_field: no line of", "has a field 'prompt' or 'messages'")


def test_every_prompts_example_of_the_docs_validates():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "online.md").read_text(encoding="utf-8")
    lines = [line for line in doc.splitlines() if line.startswith("prompts: {")]
    assert len(lines) >= 5
    kinds = {TypeAdapter(PromptsConfig).validate_python(yaml.safe_load(line)["prompts"]).kind for line in lines}
    assert kinds == {"jsonl", "hh_rlhf", "hf_dataset", "gsm8k_jsonl", "reasoning_gym"}


def test_real_hh_rlhf_single_turn_prompts(real_hh_path, gpt2_tokenizer):
    """Optional (skips without ../shared): the real harmless-base test split, one-question dialogues."""
    split = load_prompts(HHRLHFPrompts(kind="hh_rlhf", path=str(real_hh_path), single_turn=True), gpt2_tokenizer)
    assert split.train_report.seen == 2312 and len(split.eval) == 64 and len(split.train) > 500
    assert all(p.count("\n\nHuman:") == 1 for p in split.train + split.eval)


def test_prompts_longer_than_the_context_are_dropped_when_loaded_and_counted(tmp_path, capsys):
    """A 64-position model sampling 32 new tokens: a 100-word prompt cannot be sampled. It is dropped before
    training (counted in the output and report.json), never an IndexError in the middle of a rollout."""
    long = "word " * 100
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in [*QUESTIONS[:3], long, long + "again"]])
    held_out = _jsonl(tmp_path / "e.jsonl", [{"prompt": QUESTIONS[5]}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", path=path) + "  prompts_per_step: 2\n"
                      "eval: {reward: null}\n", encoding="utf-8")
    overrides = ["online.max_new_tokens=32", "online.samples_per_prompt=1", f"prompts.eval_path={held_out}"]
    assert main(["online", str(recipe), *overrides]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "training prompts: dropped 2 of 5, longer than the model's context (64 tokens) minus " \
           "online.max_new_tokens (32)" in err, err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["train_prompts_too_long"] == 2

    only_long = _jsonl(tmp_path / "long.jsonl", [{"prompt": long + str(i)} for i in range(4)])
    _online_fails(capsys, tmp_path, only_long, "prompts: all 3 training prompts are longer than the model's "
                  "context (64 tokens) minus online.max_new_tokens (32)")
