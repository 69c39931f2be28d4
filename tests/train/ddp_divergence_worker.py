"""Run by test_distributed as one of two gloo processes: rank 1's loss turns NaN on one micro-batch of step 2.

Each process writes ``rank<N>.json`` into the folder it is given: the error it stopped with (or none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import make_tiny_gpt2  # noqa: E402
from train_data import tiny_pairs  # noqa: E402

import alignkit.train.trainer as trainer_module  # noqa: E402
from alignkit.data import collate_preference  # noqa: E402
from alignkit.losses import build_objective  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.models.reference import FrozenCopyReference  # noqa: E402
from alignkit.train.config import TrainConfig  # noqa: E402
from alignkit.train.distributed import init_distributed  # noqa: E402
from alignkit.train.divergence import TrainingDivergedError  # noqa: E402
from alignkit.train.trainer import Trainer  # noqa: E402

POISONED_STEP = 1  # 0-based: the second optimizer step
POISONED_RANK = 1


def main(out: Path) -> None:
    torch.set_num_threads(1)
    env = init_distributed(torch.device("cpu"))
    tokenizer = offline_gpt2_tokenizer()
    model = make_tiny_gpt2(seed=0)
    cfg = TrainConfig(lr=1e-3, batch_size=4, grad_accum=2, max_steps=3, precision="fp32")
    objective = build_objective({"name": "dpo", "beta": 0.5})
    trainer = Trainer(model, objective, cfg, train_pairs=tiny_pairs(tokenizer, 8),
                      collate=partial(collate_preference, pad_token_id=tokenizer.pad_token_id),
                      run_dir=out / "run", reference=FrozenCopyReference(model), env=env, stage="ddp")

    current = {"step": -1, "micro": 0}
    accumulate, forward = trainer.accumulate_gradients, trainer_module.objective_step

    def accumulate_tracked(step: int):
        current["step"], current["micro"] = step, 0
        return accumulate(step)

    def poisoned_forward(*args, **kwargs):
        out, stats = forward(*args, **kwargs)
        current["micro"] += 1
        if env.rank == POISONED_RANK and current["step"] == POISONED_STEP and current["micro"] == 1:
            out = dataclasses.replace(out, losses=out.losses + float("nan"))
        return out, stats

    trainer.accumulate_gradients = accumulate_tracked
    trainer_module.objective_step = poisoned_forward
    try:
        trainer.fit()
        result: dict[str, object] = {"error": None}
    except TrainingDivergedError as err:
        result = {"error": type(err).__name__, "step": err.step, "metric": err.metric, "message": str(err)}
    result["weights_finite"] = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    (out / f"rank{env.rank}.json").write_text(json.dumps(result))
    if env.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
