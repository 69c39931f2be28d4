"""Run an online recipe end to end: RLOO (one run) or WARP (merged runs), then evaluate and report.

Writes into the run folder: ``recipe.yaml``, per-run ``metrics.jsonl`` (under ``online/`` or
``warp/iterI_runM/``), ``model/`` (the final policy), ``report.json`` and ``report.md`` (reward and KL to
the initial model before/after on held-out prompts, the same evaluation as ``alignkit run``) and, for
WARP, the front ``(1 - eta) theta_sft + eta theta_final`` with reward and KL at every eta
(``plots/warp_front.png``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from alignkit.cache import write_atomic
from alignkit.eval.evaluate_run import evaluate_heldout
from alignkit.eval.kl import ReferenceFn
from alignkit.eval.reward_kl import evaluate_reward_kl
from alignkit.eval.rewards import resolve_reward
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.online.anchor import EMAAnchor, FrozenAnchor, trainable_tensors
from alignkit.online.config import OnlineConfig, SentimentPrompts
from alignkit.online.kl_control import AdaptiveKLController, FixedKLController, KLController
from alignkit.online.recipe import OnlineRecipe, online_recipe_to_yaml
from alignkit.online.trainer import OnlineResult, OnlineTrainer, ScoreFn
from alignkit.online.warp import interpolate, liti, slerp_merge
from alignkit.peft import apply_adapter, count_parameters
from alignkit.pipeline import peak_rss_mib, resolve_device, save_model, seed_everything
from alignkit.report.tables import write_report

__all__ = ["OnlineSummary", "build_score", "describe_objective", "load_tensors", "online_prompts", "run_online_recipe"]


@dataclass
class OnlineSummary:
    run_dir: Path
    report: dict[str, Any] = field(default_factory=dict)
    results: dict[str, OnlineResult] = field(default_factory=dict)


def online_prompts(recipe: OnlineRecipe) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts of the recipe's ``prompts:`` section."""
    p = recipe.prompts
    if isinstance(p, SentimentPrompts):
        from alignkit.data.sentiment import sentiment_prompts

        return (sentiment_prompts(p.num_prompts, seed=p.seed, split="train"),
                sentiment_prompts(p.num_eval_prompts, seed=p.seed, split="eval"))
    return list(p.train), list(p.eval)


def build_score(cfg: OnlineConfig, device: torch.device) -> tuple[str, ScoreFn]:
    """The reward as ``score(prompts, texts)``: a registered function (texts only) or a reward-model folder."""
    if cfg.reward is not None:
        name, fn = resolve_reward(cfg.reward)
        return name, lambda prompts, texts: fn(texts)
    from alignkit.eval.judges.reward import reward_model_scorer

    scorer = reward_model_scorer(cfg.reward_model, batch_size=cfg.reward_batch_size, device=device)
    return str(cfg.reward_model), lambda prompts, texts: scorer(list(zip(prompts, texts, strict=True)))


def describe_objective(cfg: OnlineConfig) -> str:
    """A one-line name of the objective for reports, e.g. ``rloo(k=4, beta=0.05, anchor=initial)``."""
    anchor = "initial" if cfg.anchor.kind == "initial" else f"ema({cfg.anchor.ema_rate:g})"
    kl = "" if cfg.kl_control.kind == "fixed" else f", target_kl={cfg.kl_control.target:g}"
    base = f"rloo(k={cfg.samples_per_prompt}, beta={cfg.beta:g}{kl}, anchor={anchor})"
    if cfg.warp is None:
        return base
    w = cfg.warp
    return f"warp(I={w.iterations}, M={w.runs}, liti_eta={w.liti_eta:g}) of {base}"


def load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the model's parameters of the same names."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def _controller(cfg: OnlineConfig) -> KLController:
    if cfg.kl_control.kind == "adaptive":
        return AdaptiveKLController(cfg.beta, cfg.kl_control.target, cfg.kl_control.k_beta)
    return FixedKLController(cfg.beta)


def _stage_summary(result: OnlineResult) -> dict[str, Any]:
    first = result.history[0] if result.history else {}
    return {
        "steps": result.steps,
        "wall_seconds": result.wall_seconds,
        "steps_per_second": result.steps / result.wall_seconds if result.wall_seconds else None,
        "first_train_metrics": {k: v for k, v in first.items() if k != "step"},
        "last_train_metrics": result.final_metrics,
    }


def _train(recipe: OnlineRecipe, policy, tokenizer, score: ScoreFn, prompts: list[str], *, run_dir: Path,
           seed: int, initial: ReferenceFn | None, stage: str, console: Console, resume: bool) -> OnlineResult:
    cfg = recipe.online
    anchor = EMAAnchor(policy, cfg.anchor.ema_rate) if cfg.anchor.kind == "ema" else FrozenAnchor(policy)
    trainer = OnlineTrainer(policy, tokenizer, score, cfg, recipe.train, prompts=prompts, anchor=anchor,
                            controller=_controller(cfg), run_dir=run_dir, initial=initial, seed=seed, stage=stage,
                            chunk_size=recipe.model.logps_chunk_size, padding_free=recipe.model.padding_free,
                            console=console)
    return trainer.fit(resume=resume)


def _warp(recipe: OnlineRecipe, policy, tokenizer, score: ScoreFn, prompts: list[str], *, initial: ReferenceFn,
          theta_sft: dict[str, torch.Tensor], seed: int, summary: OnlineSummary,
          console: Console, resume: bool) -> dict[str, torch.Tensor]:
    """I iterations of M runs from a shared start, merged by SLERP; LITI moves the start. Returns theta_final."""
    warp = recipe.online.warp
    assert warp is not None
    theta_init, merged = theta_sft, theta_sft
    for i in range(warp.iterations):
        finals = []
        for m in range(warp.runs):
            load_tensors(policy, theta_init)
            stage = f"warp_iter{i}_run{m}"
            console.rule(f"[bold]{stage}[/]")
            # Runs of one iteration differ only in prompt order and sampling: the seed.
            summary.results[stage] = _train(recipe, policy, tokenizer, score, prompts,
                                            run_dir=recipe.run_dir() / "warp" / f"iter{i}_run{m}",
                                            seed=seed + m + warp.runs * i, initial=initial, stage=stage,
                                            console=console, resume=resume)
            finals.append(trainable_tensors(policy))
        merged = slerp_merge(theta_init, finals, eps=warp.eps)
        theta_init = liti(theta_init, merged, warp.liti_eta)
    return merged


def _front(recipe: OnlineRecipe, policy, tokenizer, eval_prompts: list[str], initial: ReferenceFn,
           theta_sft: dict[str, torch.Tensor], theta_final: dict[str, torch.Tensor],
           console: Console) -> list[dict[str, Any]]:
    """Reward and KL to the SFT model of (1 - eta) theta_sft + eta theta_final for every eta of the grid."""
    assert recipe.online.warp is not None and recipe.eval is not None and recipe.eval.reward is not None
    ev = recipe.eval
    points = []
    for eta in recipe.online.warp.front_etas:
        load_tensors(policy, interpolate(theta_sft, theta_final, eta))
        rep = evaluate_reward_kl(policy, initial, tokenizer, eval_prompts[: ev.num_prompts], ev.reward,
                                 samples_per_prompt=ev.samples_per_prompt, max_new_tokens=ev.max_new_tokens,
                                 temperature=ev.temperature, top_p=ev.top_p, batch_size=ev.batch_size, seed=ev.seed,
                                 label=f"eta={eta:g}")
        console.print(f"warp front eta={eta:g}: reward {rep.reward.estimate:.3f}  kl {rep.kl.estimate:.2f}")
        points.append({"eta": eta, "reward": rep.reward.to_dict(), "kl": rep.kl.to_dict(),
                       "mean_length": rep.mean_length, "reward_name": rep.reward_name})
    load_tensors(policy, theta_final)
    return points


def run_online_recipe(recipe: OnlineRecipe, *, resume: bool = False, console: Console | None = None) -> OnlineSummary:
    """Train (RLOO or WARP), save the model, evaluate reward and KL to the initial model, write the report.

    With ``resume``, every run continues from its latest checkpoint (finished WARP runs are reloaded, not
    retrained), so an interrupted recipe picks up where it stopped.
    """
    console = console or Console(stderr=True)
    torch_device = resolve_device(recipe.train.device)
    run_dir = recipe.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "recipe.yaml", online_recipe_to_yaml(recipe))
    started = time.perf_counter()
    seed = recipe.train.seed if recipe.train.seed is not None else recipe.seed
    seed_everything(recipe.seed)
    tokenizer = load_tokenizer(recipe.model)
    policy = load_causal_lm(recipe.model, torch_device)
    if recipe.adapter.kind != "none":
        apply_adapter(policy, recipe.adapter)
    trainable, total = count_parameters(policy)
    train_prompts, eval_prompts = online_prompts(recipe)
    reward_name, score = build_score(recipe.online, torch_device)
    console.print(f"online: {len(train_prompts)} train / {len(eval_prompts)} held-out prompts, reward {reward_name}, "
                  f"{trainable:,} of {total:,} parameters trainable")
    # The initial policy, exactly: its trainable tensors swapped back in (no second model in memory).
    initial_anchor = FrozenAnchor(policy)
    initial = initial_anchor.model_context
    summary = OnlineSummary(run_dir=run_dir)
    report: dict[str, Any] = {
        "recipe": recipe.name,
        "method": "warp" if recipe.online.warp else "rloo",
        "objective": describe_objective(recipe.online),
        "online": recipe.online.model_dump(mode="json"),
        "train_prompts": len(train_prompts),
        "heldout_prompts": len(eval_prompts),
        "parameters": {"trainable": trainable, "total": total},
    }
    if recipe.online.warp is None:
        anchor_is_initial = recipe.online.anchor.kind == "initial"
        summary.results["online"] = _train(recipe, policy, tokenizer, score, train_prompts,
                                           run_dir=run_dir / "online", seed=seed,
                                           initial=None if anchor_is_initial else initial, stage="online",
                                           console=console, resume=resume)
    else:
        theta_sft = initial_anchor.tensors
        theta_final = _warp(recipe, policy, tokenizer, score, train_prompts, initial=initial, theta_sft=theta_sft,
                            seed=seed, summary=summary, console=console, resume=resume)
        load_tensors(policy, theta_final)
        if recipe.eval is not None and recipe.eval.reward is not None:
            report["warp_front"] = _front(recipe, policy, tokenizer, eval_prompts, initial, theta_sft, theta_final,
                                          console)
    report["stages"] = {name: _stage_summary(r) for name, r in summary.results.items()}
    save_model(policy, tokenizer, run_dir / "model")
    if recipe.eval is not None:
        report.update(evaluate_heldout(recipe.eval, policy, initial, tokenizer, eval_prompts, None, run_dir=run_dir,
                                       console=console, device=str(torch_device)))
    report["wall_seconds"] = time.perf_counter() - started
    report["peak_rss_mib"] = peak_rss_mib()
    summary.report = report
    write_report(report, run_dir, console=console)
    if report.get("warp_front"):
        from alignkit.online.frontier import front_markdown, plot_online_frontier

        plot = plot_online_frontier([run_dir], run_dir / "plots" / "warp_front.png", title=f"{recipe.name}: WARP front")
        with (run_dir / "report.md").open("a") as f:
            f.write(front_markdown(report) + (f"\n![warp front]({plot.relative_to(run_dir)})\n" if plot else ""))
    return summary
