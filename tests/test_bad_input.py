"""Bad input ends in a clear error: exit status 2 from `alignkit`, the field, file or line named, no traceback.

Each case here once gave a traceback, hung, passed silently or named nothing.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import typing
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import BaseModel

from alignkit.cli import main
from alignkit.data import JsonlSource, load_examples
from alignkit.data.types import MALFORMED
from alignkit.losses import list_losses
from alignkit.models.config import ModelConfig
from alignkit.models.load import ModelLoadError, load_causal_lm
from alignkit.recipe import Recipe, apply_overrides, load_recipe
from alignkit.recipe.online import OnlineRecipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "examples" / "my_losses.py"

BASE = """name: bad
output_dir: {out}
model:
  name_or_path: gpt2
  tokenizer: gpt2
  from_config: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}}
data:
  source:
    kind: jsonl
    path: {pairs}
  max_length: 32
  max_prompt_length: 16
  test_size: 2
loss:
  name: dpo
  beta: 0.1
train:
  batch_size: 2
  max_steps: 1
  device: cpu
"""


def _pairs(tmp_path: Path, rows: list[dict] | None = None, name: str = "pairs.jsonl") -> Path:
    rows = rows if rows is not None else [{"prompt": f"Q{i}", "chosen": " yes", "rejected": " no"} for i in range(8)]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _recipe(tmp_path: Path, text: str | None = None, *, pairs: Path | None = None) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text if text is not None else BASE.format(out=tmp_path / "run", pairs=pairs or _pairs(tmp_path)),
                    encoding="utf-8")
    return path


def _squash(text: str) -> str:
    # Rich wraps long lines (and folds long words) at the console width: compare without whitespace.
    return re.sub(r"\s+", "", text)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    """Run `alignkit argv`: exit status 2, no traceback, every needle in the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert _squash(needle) in _squash(err), f"{needle!r} not in:\n{err}"
    return err


# ---------------------------------------------------------------------------------------------------------
# Overrides

def test_an_index_on_a_single_loss_is_an_override_error(tmp_path, capsys):
    _fails(capsys, ["validate", str(_recipe(tmp_path)), "loss[5].weight=1"],
           "override 'loss[5].weight=1': loss is a mapping, not a list")


def test_a_string_where_the_plugin_list_goes_is_one_plugin(tmp_path, capsys):
    _fails(capsys, ["validate", str(_recipe(tmp_path)), "plugins=nosuch_module"],
           "plugin 'nosuch_module': no such .py file or importable module")


def test_an_error_is_one_line_however_long_even_in_a_log(tmp_path, capsys):
    """stderr here is not a terminal (as in a log file or CI): the error is still one line, not wrapped at the
    console's 80 columns, so a log can be searched for it."""
    plugin = "no_such_module_" + "x" * 120
    err = _fails(capsys, ["validate", str(_recipe(tmp_path)), f"plugins={plugin}"])
    line = err.splitlines()[0]
    assert line.startswith("error: ") and line.endswith(f"plugin '{plugin}': no such .py file or importable module"), err


def test_switching_a_kinded_section_by_override_drops_the_old_kinds_settings(tmp_path, capsys):
    text = BASE.format(out=tmp_path / "run", pairs=_pairs(tmp_path)) + (
        "eval:\n  num_prompts: 2\n  judge:\n    kind: reward\n    reward: vader_sentiment\n    batch_size: 2\n"
        "    max_flip_rate: 0.3\n")
    path = _recipe(tmp_path, text)
    recipe = load_recipe(path, ["eval.judge.kind=local", "eval.judge.model=gpt2"])
    judge = recipe.eval.judge
    assert judge.kind == "local" and judge.model == "gpt2" and judge.max_flip_rate == 0.3  # every judge's check
    assert judge.batch_size == 4  # a reward judge's batch (texts) is not a local judge's (prompts): the default
    assert main(["validate", str(path), "eval.judge.kind=local", "eval.judge.model=gpt2"]) == 0
    # A local judge's `model` (the judge) is not a reward judge's `model` (a reward-model folder): dropped.
    local = path.read_text().replace("kind: reward\n    reward: vader_sentiment", "kind: local\n    model: gpt2")
    path.write_text(local)
    judge = load_recipe(path, ["eval.judge.kind=reward", "eval.judge.reward=vader_sentiment"]).eval.judge
    assert judge.kind == "reward" and judge.reward == "vader_sentiment" and judge.model is None
    # Switching to the same kind keeps everything; a kinded section that is not a union keeps its settings.
    data = {"eval": {"judge": {"kind": "reward", "reward": "vader_sentiment"}}}
    assert apply_overrides(data, ["eval.judge.kind=reward"])["eval"]["judge"]["reward"] == "vader_sentiment"


# ---------------------------------------------------------------------------------------------------------
# The YAML file itself

def test_deep_nesting_is_refused(tmp_path, capsys):
    _fails(capsys, ["validate", str(_recipe(tmp_path, "name: t\nx: " + "[" * 3000 + "]" * 3000 + "\n"))],
           "nested too deeply")
    _fails(capsys, ["validate", str(_recipe(tmp_path, "name: t\nx: " + "[" * 60 + "]" * 60 + "\n"))],
           "nested 61 levels deep")


@contextmanager
def _alarm(seconds: int):
    """Raise TimeoutError in the block after ``seconds``; the previous SIGALRM handler comes back after it."""
    def handler(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_the_alarm_helper_leaves_no_handler_nor_alarm_behind():
    before = signal.getsignal(signal.SIGALRM)
    with _alarm(20):
        assert signal.getsignal(signal.SIGALRM) is not before
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.alarm(0) == 0  # no alarm pending


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    assert len(bomb.encode()) < 400
    with _alarm(20):
        _fails(capsys, ["validate", str(_recipe(tmp_path, bomb))], "aliases (*name) expand to", "more than 10,000 beyond what is written")
        _fails(capsys, ["validate", str(_recipe(tmp_path)), "x=[&a [1,1,1,1,1,1,1,1,1,1], [*a,*a,*a]]"],
               "Extra inputs are not permitted")  # a small expansion is fine
        _fails(capsys, ["validate", str(_recipe(tmp_path, "a: &a [1, *a]\n"))], "refers to a value that contains it")


def test_a_duplicate_key_is_an_error_with_both_lines(tmp_path, capsys):
    path = _recipe(tmp_path, BASE.format(out=tmp_path / "run", pairs=_pairs(tmp_path)) + "train:\n  lr: 1.0\n")
    _fails(capsys, ["validate", str(path)], f"{path}:21: duplicate key 'train' (first at line 17)")


@pytest.mark.parametrize("content", [bytes(range(256)), "name: caf\xe9\n".encode("latin-1")], ids=["binary", "latin1"])
def test_a_recipe_that_is_not_utf8_text_is_named(tmp_path, capsys, content):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    _fails(capsys, ["validate", str(path)], f"{path}: not a UTF-8 text file")


# ---------------------------------------------------------------------------------------------------------
# Values

def _config_models() -> set[type[BaseModel]]:
    """Every pydantic model a recipe (offline or online) or a registered loss is made of."""
    seen: set[type[BaseModel]] = set()

    def walk(annotation) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                for info in annotation.model_fields.values():
                    walk(info.annotation)
            return
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(Recipe)
    walk(OnlineRecipe)
    for spec in list_losses():
        walk(spec.config)
    return seen


def test_every_config_model_refuses_infinities_and_nans():
    models = _config_models()
    assert len(models) > 20
    assert [m.__name__ for m in models if m.model_config.get("allow_inf_nan", True)] == []


@pytest.mark.parametrize("override, field", [
    ("train.lr=.inf", "train.lr"),
    ("train.lr=nan", "train.lr"),
    ("loss.beta=.inf", "loss.beta"),
    ("adapter={kind: bottleneck, scaling: .inf}", "adapter.scaling"),
    ("train.early_stopping={min_delta: .nan}", "train.early_stopping.min_delta"),
    ("data.test_size=.inf", "data.test_size"),
    ("train.betas=[0.9,1.5]", "train.betas"),
    ("seed=-1", "seed"),
    ("data.seed=4294967296", "data.seed"),
    ("model.from_config.layer_norm_epsilon=.nan", "model.from_config.layer_norm_epsilon"),
])
def test_bad_numbers_are_refused_with_their_field(tmp_path, capsys, override, field):
    _fails(capsys, ["validate", str(_recipe(tmp_path)), override], f"{field}:")


# ---------------------------------------------------------------------------------------------------------
# Data

def test_null_responses_and_negative_weights_are_malformed_rows_with_their_line(tmp_path):
    rows = [{"prompt": "Q1", "chosen": " a", "rejected": " b", "w": 1},
            {"prompt": "Q2", "chosen": None, "rejected": " b", "w": 1},
            {"prompt": "Q3", "chosen": " a", "rejected": None, "w": 1},
            {"prompt": "Q4", "chosen": " a", "rejected": " b", "w": -0.5}]
    path = _pairs(tmp_path, rows)
    examples, report = load_examples(JsonlSource(path=str(path), weight_field="w"))
    assert [e.prompt for e in examples] == ["Q1"]
    where = report.locations[MALFORMED]
    assert where[0] == "pairs.jsonl:2: field 'chosen' is null" and where[1] == "pairs.jsonl:3: field 'rejected' is null"
    assert where[2].startswith("pairs.jsonl:4: field 'w' must be a finite number >= 0")


def test_an_empty_data_file_says_it_has_no_usable_rows(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _fails(capsys, ["run", str(_recipe(tmp_path, pairs=empty))], f"{empty} has no usable rows")


# ---------------------------------------------------------------------------------------------------------
# Plugins and models

def test_a_plugin_that_calls_sys_exit_is_named(tmp_path, capsys):
    plugin = tmp_path / "quitter.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    _fails(capsys, ["validate", str(_recipe(tmp_path)), f"plugins=[{plugin}]"],
           f"plugin '{plugin}' ({plugin}) called sys.exit(3) while being imported")
    assert "alignkit_plugin_quitter" not in " ".join(sys.modules)


def test_a_corrupt_safetensors_file_is_named(tmp_path, capsys):
    from conftest import make_tiny_gpt2

    folder = tmp_path / "model"
    make_tiny_gpt2(vocab_size=64).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100] + b"garbage")
    with pytest.raises(ModelLoadError, match=re.escape(f"{weights} is unreadable")):
        load_causal_lm(ModelConfig(name_or_path=str(folder)))
    _fails(capsys, ["run", str(_recipe(tmp_path)), f"model.name_or_path={folder}", "model.from_config=null"],
           f"{weights} is unreadable")


def test_fetch_of_an_unknown_name_is_an_error_naming_the_aliases(tmp_path, capsys):
    from alignkit.models import MODEL_ALIASES

    err = _fails(capsys, ["fetch", "nosuch-model"], "cannot fetch 'nosuch-model'", *MODEL_ALIASES)
    assert "ready" not in err
    # A local folder that exists is accepted as it is (nothing to fetch).
    assert main(["fetch", str(tmp_path)]) == 0
    assert "ready" in capsys.readouterr().out


def test_a_tokenizer_larger_than_the_embedding_is_refused_at_load(tmp_path, capsys):
    _fails(capsys, ["run", str(_recipe(tmp_path)), "model.from_config.vocab_size=1000"],
           "the tokenizer has 50,257 tokens but the model's embedding table has 1,000 rows")


# ---------------------------------------------------------------------------------------------------------
# `alignkit compare --plugin my_losses.py --losses dpo,sigmoid_hinge` (docs/custom_loss.md's own example)

@pytest.fixture
def example_plugin_not_loaded():
    """A process where examples/my_losses.py was never imported (other tests import it); restored after."""
    from alignkit import plugins
    from alignkit.losses import LOSSES

    loaded, modules = dict(plugins._LOADED_FILES), dict(sys.modules)
    spec = LOSSES.get("sigmoid_hinge") if "sigmoid_hinge" in LOSSES else None
    LOSSES.remove("sigmoid_hinge")
    plugins._LOADED_FILES.pop(EXAMPLE_PLUGIN.resolve(), None)
    yield
    LOSSES.remove("sigmoid_hinge")
    if spec is not None:
        LOSSES.add("sigmoid_hinge", spec)
    plugins._LOADED_FILES.clear()
    plugins._LOADED_FILES.update(loaded)
    for name in [n for n in sys.modules if n.startswith("alignkit_plugin_my_losses") and n not in modules]:
        del sys.modules[name]
    sys.modules.update({n: m for n, m in modules.items() if n.startswith("alignkit_plugin_my_losses")})


def test_compare_loads_plugins_before_checking_loss_names(tmp_path, example_plugin_not_loaded):
    from alignkit.commands.compare import plan_comparison

    out, plans = plan_comparison(_recipe(tmp_path), ["dpo", "sigmoid_hinge"], plugins=[str(EXAMPLE_PLUGIN)],
                                 out=tmp_path / "cmp")
    assert [p.label for p in plans] == ["dpo", "sigmoid_hinge"]
    assert plans[1].recipe.objective().terms[0].name == "sigmoid_hinge"
