"""Reward and KL along training (``eval.every``): one run draws a curve on the reward-versus-KL frontier.

Every N optimizer steps the policy is sampled on the held-out prompts of the final evaluation, with the same
sampling seed, and scored for reward and KL to the reference (as the DPO paper's Figure 2 evaluated
checkpoints along training). The points go to the stage's ``metrics.jsonl`` as ``curve/`` keys, so a resumed
run keeps those it logged; :func:`curve_points` reads them back and the report's ``reward_kl_curve`` ends
with the run's own final evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from alignkit.eval.config import EvalConfig
from alignkit.eval.reward_kl import evaluate_reward_kl
from alignkit.models.kl import ReferenceFn

__all__ = ["CURVE_PREFIX", "curve_evaluator", "curve_points"]

CURVE_PREFIX = "curve/"


def curve_evaluator(cfg: EvalConfig, policy: nn.Module, reference: ReferenceFn, tokenizer,
                    prompts: Sequence[str]) -> Callable[[], dict[str, float]]:
    """A zero-argument function: the policy's reward and KL now, as flat ``curve/`` metrics.

    It samples under :func:`torch.random.fork_rng`, so the training's random state is the same afterwards
    (a run with a curve trains as one without), and puts the policy back in training mode.
    """
    if cfg.reward is None:
        raise ValueError("eval.every needs eval.reward")
    reward = cfg.reward
    kept = list(prompts)[: cfg.num_prompts]
    device = next(policy.parameters()).device
    devices = [device] if device.type == "cuda" else []

    def evaluate() -> dict[str, float]:
        was_training = policy.training
        policy.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                report = evaluate_reward_kl(policy, reference, tokenizer, kept, reward, cfg.sampling, n_examples=0,
                                            label="policy (along training)")
        finally:
            policy.train(was_training)
        out = {}
        for name, entry in (("reward", report.reward.to_dict()), ("kl", report.kl.to_dict())):
            out[f"{CURVE_PREFIX}{name}"] = float(entry["estimate"])
            for side in ("low", "high"):  # too few prompts for an interval: no bound (never a NaN in the log)
                if math.isfinite(entry[side]):
                    out[f"{CURVE_PREFIX}{name}_{side}"] = float(entry[side])
        return out

    return evaluate


def curve_points(records: Iterable[dict[str, Any]], final: dict[str, Any] | None = None,
                 final_step: int | None = None) -> list[dict[str, Any]]:
    """The curve in step order: ``{"step", "reward", "kl"}`` (intervals) per logged point, then the final one.

    Args:
        records: a stage's ``metrics.jsonl`` records.
        final: the report's ``reward_kl.after`` (the trained policy), appended at ``final_step``.
        final_step: the stage's last step.
    """
    def interval(record: dict[str, Any], name: str) -> dict[str, float]:
        key = CURVE_PREFIX + name
        return {"estimate": record[key], "low": record.get(f"{key}_low"), "high": record.get(f"{key}_high")}

    points = {int(r["step"]): {"step": int(r["step"]), "reward": interval(r, "reward"), "kl": interval(r, "kl")}
              for r in records if f"{CURVE_PREFIX}kl" in r and "step" in r}
    if final is not None and final_step is not None:
        points[final_step] = {"step": final_step, "reward": final["reward"], "kl": final["kl"]}
    return [points[step] for step in sorted(points)]
