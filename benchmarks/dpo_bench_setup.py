"""What both sides of the DPO benchmark share: the case (model, tokenizer), the data, the step order.

alignkit and TRL must see the same model weights, the same tokenized pairs in the same order, and the
same batch shapes; everything that decides those lives here, so the two runners cannot drift apart.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.data.types import TokenizedPair

__all__ = [
    "CASES",
    "HH_DEFAULT",
    "BenchSpec",
    "build_model",
    "build_tokenizer",
    "machine_summary",
    "ordered_pairs",
    "step_tokens",
    "training_flops",
    "wait_for_idle",
]

HH_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

# Case name -> (model kind, default batch, max_length, max_prompt_length, timed steps, warm-up steps).
CASES: dict[str, dict] = {
    "tiny-gpt2": {"batch": 8, "max_length": 512, "max_prompt_length": 256, "steps": 10, "warmup": 2},
    "smollm2": {"batch": 4, "max_length": 256, "max_prompt_length": 128, "steps": 3, "warmup": 1},
    # Synthetic pairs of exactly max_length tokens on a tiny Llama body: the scaling sweeps (scaling.py).
    "tiny-llama": {"batch": 1, "max_length": 1024, "max_prompt_length": 512, "steps": 1, "warmup": 1},
}

SYNTHETIC_FIRST_ID = 3  # random pair tokens avoid the special ids of _id_tokenizer


@dataclass
class BenchSpec:
    """One benchmark setting, identical for both frameworks.

    Attributes:
        case: ``tiny-gpt2`` (GPT2Config with small dims, real 50,257-token vocabulary), ``smollm2``
            (SmolLM2-135M-Instruct from ``model_path``) or ``tiny-llama`` (LlamaConfig with small dims and a
            ``vocab``-token vocabulary, fed random pairs whose prompt is ``max_prompt_length`` tokens and whose
            chosen and rejected responses fill the rest of ``max_length``: every sequence is exactly
            ``max_length`` tokens, so the sweeps control the length, not the data).
        batch: pairs per optimizer step (2 x batch sequences per forward).
        max_length / max_prompt_length: token limits of prompt + response and of the prompt.
        steps: timed optimizer steps, after ``warmup`` untimed ones.
        reference: ``copy`` (a frozen reference model, one extra forward per step) or ``cached``
            (reference log-probs computed before training; no reference model while training).
        hidden / layers / heads: tiny GPT-2 / tiny Llama dims (ignored for smollm2).
        vocab: tiny Llama vocabulary size (tiny-llama only).
        lr: peak learning rate (linear decay to 0 over warmup + steps, no warm-up ramp).
        beta: DPO beta (sigmoid loss).
        seed: weights and data order.
        hh_path: the HH-RLHF .jsonl.gz file.
        model_path: the converted SmolLM2 folder (smollm2 only).
        chunk_size: alignkit's lm-head chunk size.
        gradient_checkpointing: activation checkpointing of the transformer body, on both sides (TRL's
            default is on).
        padding_free: alignkit packs each batch's sequences without padding (its default); TRL's
            collator pads as by default.
        device: ``cpu`` or ``cuda``; peak memory is the process's peak RSS on CPU and
            ``torch.cuda.max_memory_allocated`` on CUDA.
        precision: ``fp32``, or ``bf16`` autocast over fp32 weights on both sides (TRL ``bf16=True``).
    """

    case: str = "tiny-gpt2"
    batch: int = 8
    max_length: int = 512
    max_prompt_length: int = 256
    steps: int = 10
    warmup: int = 2
    reference: str = "copy"
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    vocab: int = 32768
    lr: float = 1e-5
    beta: float = 0.1
    seed: int = 0
    hh_path: str = str(HH_DEFAULT)
    model_path: str | None = None
    chunk_size: int = 256
    gradient_checkpointing: bool = False
    padding_free: bool = True
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.case not in CASES:
            raise ValueError(f"case must be one of {sorted(CASES)}, got {self.case!r}")
        if self.reference not in ("copy", "cached"):
            raise ValueError(f"reference must be 'copy' or 'cached', got {self.reference!r}")
        if self.warmup < 1 or self.steps < 1:
            raise ValueError(f"need warmup >= 1 and steps >= 1, got warmup={self.warmup} steps={self.steps}")
        if self.device not in ("cpu", "cuda") or self.precision not in ("fp32", "bf16"):
            raise ValueError(f"device must be cpu/cuda and precision fp32/bf16, got {self.device}/{self.precision}")
        if self.case == "tiny-llama" and self.vocab <= SYNTHETIC_FIRST_ID:
            raise ValueError(f"vocab must be above {SYNTHETIC_FIRST_ID} (the special ids), got {self.vocab}")
        if self.case == "smollm2" and not self.model_path:
            raise ValueError("case smollm2 needs model_path (alignkit.models.smollm2.ensure_smollm2())")

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def label(self) -> str:
        """One line naming the setting, for tables."""
        extras = [self.device, self.precision] if self.device != "cpu" or self.precision != "fp32" else []
        extras += ["ckpt"] if self.gradient_checkpointing else []
        extras += [] if self.padding_free else ["padded"]
        tail = f" ({', '.join(extras)})" if extras else ""
        vocab = f" V={self.vocab}" if self.case == "tiny-llama" else ""
        return f"{self.case} B={self.batch} L={self.max_length}{vocab} ref={self.reference}{tail}"

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(spec: BenchSpec):
    """The real tokenizer of the case: GPT-2 BPE (pad = eos) or SmolLM2's own."""
    if spec.case == "tiny-gpt2":
        from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer

        tok = offline_gpt2_tokenizer()
    elif spec.case == "tiny-llama":
        tok = _id_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec.model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _id_tokenizer():
    """A three-token tokenizer (pad 0, eos 1, unk 2) for pre-tokenized synthetic pairs: both trainers only
    read its pad and eos ids, and building it needs no download."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(specials, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_model(spec: BenchSpec) -> nn.Module:
    """The policy, fp32, train mode, no dropout; the same weights on every call with the same spec."""
    torch.manual_seed(spec.seed)
    if spec.case == "tiny-gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=50257, n_positions=max(1024, spec.max_length), n_embd=spec.hidden,
                         n_layer=spec.layers, n_head=spec.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
    elif spec.case == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=4 * spec.hidden,
                          num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                          num_key_value_heads=spec.heads, max_position_embeddings=spec.max_length,
                          tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=1)
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=torch.float32)
    return model.to(spec.device).train()


def training_flops(model: nn.Module, tokens: int, reference_forward: bool) -> float:
    """Model FLOPs of one optimizer step over ``tokens`` real tokens: 6 N per token for forward and
    backward of the N non-embedding parameters (plus 2 N for a reference forward), the convention of
    MFU figures; padding, recomputation and attention scores are not counted."""
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    # The output projection is real work even when it shares its weight with the input embedding.
    n = sum(p.numel() for p in model.parameters() if p is not embed) + (head.numel() if head is embed else 0)
    return (6 + (2 if reference_forward else 0)) * n * tokens


def ordered_pairs(spec: BenchSpec, tokenizer) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """The first ``batch x total_steps`` usable HH pairs, re-indexed 0..P-1.

    Returns:
        ``(pairs, visited)``: the pairs in dataset order (what alignkit's Trainer is given) and in the order
        the Trainer visits them, ``step_order(P, seed, 0)``; feeding TRL ``visited`` with a sequential
        sampler makes step k of both frameworks see exactly the same pairs.
    """
    from alignkit.data.config import HHRLHFSource
    from alignkit.data.hh_rlhf import load_hh_rlhf
    from alignkit.data.tokenize import tokenize_pairs
    from alignkit.train.trainer import step_order

    if spec.case == "tiny-llama":
        pairs = synthetic_pairs(spec)
        return pairs, [pairs[i] for i in step_order(len(pairs), spec.seed, 0)]
    if not Path(spec.hh_path).exists():
        raise FileNotFoundError(f"HH-RLHF file not found: {spec.hh_path}")
    need = spec.batch * spec.total_steps
    examples, _ = load_hh_rlhf(HHRLHFSource(path=spec.hh_path))
    pairs, _ = tokenize_pairs(examples[: need * 2], tokenizer, spec.max_length, spec.max_prompt_length)
    if len(pairs) < need:
        raise ValueError(f"only {len(pairs)} usable pairs, need {need} (batch {spec.batch} x {spec.total_steps} steps)")
    pairs = [TokenizedPair(p.prompt_ids, p.chosen_ids, p.rejected_ids, 1.0, i) for i, p in enumerate(pairs[:need])]
    return pairs, [pairs[i] for i in step_order(need, spec.seed, 0)]


def synthetic_pairs(spec: BenchSpec) -> list[TokenizedPair]:
    """``batch x total_steps`` random pairs: a ``max_prompt_length``-token prompt and two responses of
    ``max_length - max_prompt_length`` tokens each (the same for every seed of the weights)."""
    response = spec.max_length - spec.max_prompt_length
    if response < 1:
        raise ValueError(f"max_length {spec.max_length} leaves no response after a {spec.max_prompt_length}-token prompt")
    gen = torch.Generator().manual_seed(spec.seed + 1)

    def ids(n: int) -> list[int]:
        return torch.randint(SYNTHETIC_FIRST_ID, spec.vocab, (n,), generator=gen).tolist()

    return [TokenizedPair(ids(spec.max_prompt_length), ids(response), ids(response), 1.0, i)
            for i in range(spec.batch * spec.total_steps)]


def step_tokens(pairs: list[TokenizedPair], batch: int, step: int) -> int:
    """Non-padding tokens of optimizer step ``step`` (chosen and rejected sequences, prompts included)."""
    chunk = pairs[step * batch:(step + 1) * batch]
    return sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in chunk)


def wait_for_idle(max_load: float, poll_seconds: float = 60.0, max_wait_seconds: float = 1800.0) -> float:
    """Block until the 1-minute load average is below ``max_load`` (0 disables); returns the load seen.

    Timings on a shared machine mean something only when nothing else runs.
    """
    load = os.getloadavg()[0]
    if max_load <= 0:
        return load
    deadline = time.monotonic() + max_wait_seconds
    while load >= max_load and time.monotonic() < deadline:
        print(f"  load {load:.2f} >= {max_load}: waiting {poll_seconds:.0f} s", flush=True)
        time.sleep(poll_seconds)
        load = os.getloadavg()[0]
    return load


def machine_summary() -> str:
    """CPU model, cores, RAM, OS and Python: one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")
