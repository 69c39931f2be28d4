"""Shared fixtures: tiny real models built from configs, the real GPT-2 tokenizer, HH-RLHF data.

Nothing here downloads: the Hub is switched off before transformers is imported. Tests of code paths use
data the project ships (``hh_path``: tests/fixtures/, written by tests/fixtures/make_hh_fixture.py); only
tests about the real data use ../shared (``real_hh_path``), which a user's clone does not have: every test
asking for it is marked ``real_data`` here, which the default run deselects (``make test-real-data`` runs
them). ALIGNKIT_TEST_SHARED_DIR moves that folder.

Hardware facts: ``pytest --hardware=native-bf16`` (or ``no-bf16``) states whether the machine computes bf16
natively, through ``ALIGNKIT_HARDWARE`` (alignkit/models/hardware.py), for every test and every process a test
starts; an emulated bf16 computes the same values, only slower, so the native-bf16 code path runs on any CPU.
The default, ``detect``, states what this CPU's flags say, so that ``precision: auto`` does not measure the
machine in every test (the measurement has its own tests). An ``ALIGNKIT_HARDWARE`` already set wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("ALIGNKIT_TEST_SHARED_DIR", ROOT.parent / "shared"))
HH_FIXTURE_PATH = ROOT / "tests" / "fixtures" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
REAL_HH_PATH = SHARED_DIR / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


# Tiny models on a shared 2-core machine: one intra-op thread avoids thread-pool contention that made
# tiny training steps ~100x slower under load (subprocess tests set OMP_NUM_THREADS themselves).
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", choices=("detect", "native-bf16", "no-bf16"), default=None,
                     help="state the hardware's bf16 facts for every test (default: $ALIGNKIT_HARDWARE, else "
                          "what this CPU's flags say)")


def pytest_configure(config: pytest.Config) -> None:
    from alignkit.models.hardware import HARDWARE_ENV, detect_hardware, native_bf16

    stated = config.getoption("--hardware") or os.environ.get(HARDWARE_ENV) or "detect"
    if stated == "detect":
        os.environ.pop(HARDWARE_ENV, None)
        stated = "native-bf16" if native_bf16(detect_hardware("cpu")) else "no-bf16"
    os.environ[HARDWARE_ENV] = stated


def pytest_report_header(config: pytest.Config) -> str:
    return f"hardware facts: ALIGNKIT_HARDWARE={os.environ.get('ALIGNKIT_HARDWARE')}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write into the user's cache, except for the real model the slow tests share."""
    if "ALIGNKIT_TEST_USE_USER_CACHE" not in os.environ:
        os.environ["ALIGNKIT_CACHE"] = str(tmp_path_factory.mktemp("alignkit-cache"))


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer

    return offline_gpt2_tokenizer()


def interrupt_fit(trainer, at_step: int, error: type[BaseException] = KeyboardInterrupt) -> None:
    """Run ``trainer.fit()`` as if the process were killed when step ``at_step`` (0-based) begins."""
    step = trainer.train_step

    def dying_step(i: int) -> dict[str, float]:
        if i == at_step:
            raise error
        return step(i)

    trainer.train_step = dying_step
    with pytest.raises(error):
        trainer.fit()


def make_tiny_gpt2(vocab_size: int = 50257, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # No dropout: tests compare runs that must be bit-for-bit deterministic in train mode.
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def make_tiny_llama(vocab_size: int = 50257, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_gpt2():
    return make_tiny_gpt2()


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def hh_path() -> Path:
    """The shipped HH-RLHF fixture (72 rows in the real format): always there, never skips."""
    assert HH_FIXTURE_PATH.is_file(), f"{HH_FIXTURE_PATH} is missing: run tests/fixtures/make_hh_fixture.py"
    return HH_FIXTURE_PATH


# Fixtures that read ../shared: a test asking for one is a real-data test, whatever its own markers say.
_REAL_DATA_FIXTURES = {"real_hh_path"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture(scope="session")
def real_hh_path() -> Path:
    """The real harmless-base test split in ../shared, for the ``real_data`` tests (deselected by default)."""
    if not REAL_HH_PATH.exists():
        pytest.fail(f"real HH-RLHF data not found at {REAL_HH_PATH}: real_data tests need ../shared "
                    "(a clone has none; the default run deselects them)")
    return REAL_HH_PATH


@pytest.fixture(scope="session")
def smollm2_folder(_isolated_cache) -> Path:
    """The converted SmolLM2 folder, which tests never download: `make test-slow` fetches it first."""
    from alignkit.cache import cache_dir

    folder = cache_dir("models") / "smollm2-135m-instruct"
    if not (folder / "config.json").exists():
        pytest.skip("SmolLM2 is not in the cache: run `alignkit fetch smollm2-135m-instruct` and set "
                    "ALIGNKIT_TEST_USE_USER_CACHE=1 (`make test-slow` does both)")
    return folder


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread: tiny tensors and tiny models, where on a busy machine the thread pool's
    hand-offs cost more than the arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str):
    """A module of benchmarks/ (``dpo_vs_trl``, ``scaling``, ``dpo_bench_setup``), imported with that folder on
    sys.path only for the import (the scripts import each other by bare name)."""
    import importlib

    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))
