"""Run by test_distributed under torchrun (or alone): a few DPO steps on a tiny GPT-2; save the weights."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import make_tiny_gpt2  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from train_data import tiny_pairs  # noqa: E402

from alignkit.data import collate_preference  # noqa: E402
from alignkit.losses import build_objective  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.models.reference import FrozenCopyReference  # noqa: E402
from alignkit.train.config import TrainConfig  # noqa: E402
from alignkit.train.distributed import all_reduce_gradients, init_distributed  # noqa: E402
from alignkit.train.trainer import Trainer  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    env = init_distributed(torch.device("cpu"))
    tokenizer = offline_gpt2_tokenizer()
    pairs = tiny_pairs(tokenizer, 8)
    model = make_tiny_gpt2(seed=0)
    cfg = TrainConfig(lr=1e-3, batch_size=4, grad_accum=1, max_steps=3, precision="fp32")  # compared to float rounding
    trainer = Trainer(model, build_objective({"name": "dpo", "beta": 0.5}), cfg, train_pairs=pairs,
                      collate=partial(collate_preference, pad_token_id=tokenizer.pad_token_id),
                      run_dir=out / "run", reference=FrozenCopyReference(model), env=env, stage="ddp")
    # The first step's synchronised gradient, then a short run whose logged metrics are compared.
    trainer.accumulate_gradients(0)
    all_reduce_gradients(trainer.params, env)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.fit()
    if env.is_main:
        save_file(grads, str(out / "grads.safetensors"))
    if env.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
