"""Run by test_online_distributed, alone (one process) or as one of two processes (torchrun, or by hand).

    online_ddp_worker.py equivalence OUT MODEL   every case of CASES through `alignkit online`'s code path
                                                 (run_online_recipe); each process also saves, per stage, the
                                                 trainable weights before and after, the anchor and (PPO) the
                                                 value head to OUT/<case>/rank<R>/<stage>.safetensors
    online_ddp_worker.py divergence OUT          rank 1's loss turns NaN at step 2, then (a fresh trainer) rank
                                                 1's reward does; each process writes OUT/rank<R>.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import make_tiny_gpt2  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from alignkit.commands.online import run_online_recipe  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.models.rewards import REWARDS, register_reward  # noqa: E402
from alignkit.online.anchor import EMAAnchor, trainable_tensors  # noqa: E402
from alignkit.online.config import OnlineConfig, OnlineTrainConfig  # noqa: E402
from alignkit.online.kl_control import FixedKLController  # noqa: E402
from alignkit.online.trainer import OnlineTrainer  # noqa: E402
from alignkit.recipe.online import load_online_recipe  # noqa: E402
from alignkit.train.distributed import DistEnv, init_distributed  # noqa: E402
from alignkit.train.divergence import TrainingDivergedError  # noqa: E402

REWARD = "fraction_e"
PROMPTS = ["The weather today", "My favourite food", "A story about", "The city at night", "In the morning",
           "Yesterday I saw", "Once upon a time", "The best way to"]

RECIPE = f"""name: online_ddp
seed: 0
model:
  name_or_path: MODEL
  tokenizer: gpt2
prompts:
  kind: inline
  train: {json.dumps(PROMPTS)}
  eval: [The cat]
online:
  reward: {REWARD}
  max_new_tokens: 6
train:
  optimizer: adamw
  lr: 0.001
  device: cpu
"""

# Each case: recipe overrides. 4 prompts per step on 2 processes: 2 each. The rollout's generation batches
# (6 rows: 3 groups) and update micro-batches (3 completions) fall differently in one and two processes.
CASES: dict[str, list[str]] = {
    "rloo": ["online.samples_per_prompt=2", "online.generation_batch_size=6", "online.update_batch_size=3",
             "online.anchor.kind=ema", "online.anchor.ema_rate=0.5", "online.kl_control.kind=adaptive",
             "online.kl_control.target=0.5", "online.beta=0.1", "train.prompts_per_step=4", "train.max_steps=3"],
    "reinforce": ["online.samples_per_prompt=1", "online.beta=0.05", "train.prompts_per_step=4",
                  "train.max_steps=3"],
    "warp": ["online.samples_per_prompt=2", "online.anchor.kind=ema", "online.anchor.ema_rate=0.5",
             "online.warp={iterations: 1, runs: 2}", "adapter={kind: bottleneck, reduction_factor: 4}",
             "train.prompts_per_step=2", "train.max_steps=2"],
    # PPO and GRPO: several optimizer steps per rollout. PPO's minibatches of 4 of the 8 completions are drawn
    # by a permutation, so a process holds an uneven share of each (none, some or all of it).
    "ppo": ["online.algorithm=ppo", "online.ppo={epochs: 2, minibatch_size: 4}", "online.samples_per_prompt=2",
            "online.update_batch_size=3", "online.anchor.kind=ema", "online.anchor.ema_rate=0.5",
            "online.kl_control.kind=adaptive", "online.kl_control.target=0.5", "online.beta=0.1",
            "train.prompts_per_step=4", "train.max_steps=2"],
    "grpo": ["online.algorithm=grpo", "online.grpo={iterations: 2}", "online.samples_per_prompt=2",
             "online.update_batch_size=3", "online.beta=0.1", "train.prompts_per_step=4", "train.max_steps=2"],
    # Parts whose sums cross processes: REINFORCE++'s global whitening, token_mean over uneven minibatch shares,
    # an importance-weighted k3 in the loss, the entropy bonus, a truncated rollout correction and (the dapo
    # preset's) dynamic sampling, which refills each process's own places of the step.
    "parts": ["online.algorithm=dapo", "online.advantage=reinforce_pp", "online.epochs=2", "online.minibatch_size=4",
              "online.kl={estimator: k3, placement: loss, importance_weighted: true}", "online.entropy_coef=0.01",
              "online.rollout_correction={name: tis, cap: 2.0}", "online.samples_per_prompt=2",
              "online.update_batch_size=3", "online.beta=0.1", "train.prompts_per_step=4", "train.max_steps=2"],
}


def _fraction_e(texts: list[str]) -> list[float]:
    return [t.count("e") / max(1, len(t)) for t in texts]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _record_fits(folder: dict[str, Path]) -> None:
    """Each process saves every stage's trainable weights before and after its fit, its anchor and the KL
    its beta controller was given at each update, into ``folder["case"]/rank<R>/<stage>.safetensors``."""
    fit = OnlineTrainer.fit

    def recording_fit(self: OnlineTrainer, *, resume: bool = False) -> Any:
        before = trainable_tensors(self.policy)
        fed: list[float] = []  # the KL the controller is given after each update (clipping may hide it in beta)
        update = self.controller.update

        def recording_update(kl: float) -> float:
            fed.append(kl)
            return update(kl)

        self.controller.update = recording_update
        result = fit(self, resume=resume)
        tensors = {**{f"init/{k}": v for k, v in before.items()},
                   **{f"final/{k}": v for k, v in trainable_tensors(self.policy).items()},
                   **{f"anchor/{k}": v for k, v in self.anchor.tensors.items()},
                   **({f"value/{k}": v.detach() for k, v in self.value.named_parameters() if v.requires_grad}
                      if self.value is not None else {}),
                   "kl_control": torch.tensor(fed, dtype=torch.float64)}
        out = folder["case"] / f"rank{_rank()}"
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{self.stage}.safetensors"))
        return result

    OnlineTrainer.fit = recording_fit


def equivalence(out: Path, model: str) -> None:
    recipe_path = out / f"online_rank{_rank()}.yaml"  # one each: no process waits for another's file
    recipe_path.write_text(RECIPE.replace("MODEL", model))
    folder: dict[str, Path] = {}
    _record_fits(folder)
    for name, overrides in CASES.items():
        folder["case"] = out / name
        recipe = load_online_recipe(recipe_path, [f"output_dir={folder['case'] / 'run'}", "eval=null", *overrides])
        run_online_recipe(recipe)


def _divergence_trainer(out: Path, env: DistEnv, stage: str, score) -> OnlineTrainer:
    policy = make_tiny_gpt2(seed=0)
    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=4, beta=0.1)
    train_cfg = OnlineTrainConfig(lr=1e-3, prompts_per_step=2, max_steps=3)
    return OnlineTrainer(policy, offline_gpt2_tokenizer(), score, cfg, train_cfg, prompts=PROMPTS[:4],
                         anchor=EMAAnchor(policy, 0.5), controller=FixedKLController(0.1), run_dir=out / stage,
                         stage=stage, env=env)


def _fit_result(trainer: OnlineTrainer) -> dict[str, object]:
    try:
        trainer.fit()
        result: dict[str, object] = {"error": None}
    except TrainingDivergedError as err:
        result = {"error": type(err).__name__, "step": err.step, "metric": err.metric, "message": str(err)}
    result["weights_finite"] = all(bool(torch.isfinite(p).all()) for p in trainer.policy.parameters())
    return result


def divergence(out: Path) -> None:
    env = init_distributed(torch.device("cpu"))
    poisoned_step = 1  # 0-based: the second update

    # A NaN loss on rank 1 only.
    trainer = _divergence_trainer(out, env, "loss", lambda prompts, texts: _fraction_e(texts))
    current = {"step": -1}
    step, loss_fn = trainer.train_step, trainer.updater._microbatch_loss

    def tracked_step(i: int) -> dict[str, float]:
        current["step"] = i
        return step(i)

    def poisoned_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        loss = loss_fn(*args, **kwargs)
        return loss + float("nan") if env.rank == 1 and current["step"] == poisoned_step else loss

    trainer.train_step = tracked_step
    trainer.updater._microbatch_loss = poisoned_loss  # type: ignore[method-assign]
    results = {"loss": _fit_result(trainer)}

    # A NaN reward on rank 1 only (the score is called once per update).
    calls = {"n": 0}

    def poisoned_score(prompts: list[str], texts: list[str]) -> list[float]:
        calls["n"] += 1
        rewards = _fraction_e(texts)
        return [float("nan")] * len(rewards) if env.rank == 1 and calls["n"] == poisoned_step + 1 else rewards

    results["reward"] = _fit_result(_divergence_trainer(out, env, "reward", poisoned_score))
    (out / f"rank{env.rank}.json").write_text(json.dumps(results))
    if env.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if REWARD not in REWARDS:
        register_reward(REWARD)(_fraction_e)
    torch.set_num_threads(1)
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "equivalence":
        equivalence(folder, sys.argv[3])
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    else:
        divergence(folder)
