"""Run an online recipe end to end: one run of its objective (a preset such as rloo, ppo or grpo expanded to
registered parts, see :mod:`alignkit.online.presets`) or WARP (merged runs of it), then evaluate and report.

Writes into the run folder: ``recipe.yaml``, per-run ``metrics.jsonl`` (under ``online/`` or
``warp/iterI_runM/``), ``model/`` (the final policy), ``report.json`` and ``report.md`` (reward and KL to
the initial model before/after on held-out prompts, the same evaluation as ``alignkit run``) and, for
WARP, the front ``(1 - eta) theta_sft + eta theta_final`` with reward and KL at every eta
(``plots/warp_front.png``).

Under ``torchrun`` every process trains (replicated weights, each sampling its share of the step's prompts,
see :mod:`alignkit.online.parallel`); only the main process writes files, evaluates and computes the front.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from torch import nn

from alignkit.data.prompt_sources import load_prompt_split
from alignkit.data.prompts import PromptSplit
from alignkit.data.types import DataError
from alignkit.eval.accuracy import evaluate_accuracy
from alignkit.eval.heldout import evaluate_heldout, fitting_prompts
from alignkit.eval.judges.reward import reward_model_scorer
from alignkit.eval.reward_kl import evaluate_proxy_and_true, evaluate_reward_kl
from alignkit.models.kl import ReferenceFn
from alignkit.models.load import load_tokenizer
from alignkit.models.reward_mix import weighted_sum
from alignkit.models.rewards import (
    RewardBreakdown,
    RewardExample,
    resolve_example_reward,
    resolve_reward,
    reward_total,
)
from alignkit.online.anchor import EMAAnchor, FrozenAnchor, trainable_tensors
from alignkit.online.config import OnlineConfig
from alignkit.online.kl_control import AdaptiveKLController, FixedKLController, KLController
from alignkit.online.objective import Objective
from alignkit.online.parallel import check_world_size
from alignkit.online.trainer import OnlineResult, OnlineTrainer, ScoreFn
from alignkit.online.warp import interpolate, liti, slerp_merge
from alignkit.recipe.online import OnlineRecipe, online_recipe_to_yaml
from alignkit.report.accuracy import accuracy_lines
from alignkit.report.frontier import plot_proxy_vs_true
from alignkit.train.distributed import DistEnv, broadcast_parameters
from alignkit.workflow import RecipeRun, RunContext, RunSummary, execute_run
from alignkit.workflow.skeleton import StageResult

if TYPE_CHECKING:  # importing transformers' modeling code is slow; only the annotations need it
    from transformers import PreTrainedModel

__all__ = [
    "OnlineRun",
    "build_score",
    "build_true_score",
    "describe_objective",
    "fitting_train_prompts",
    "load_tensors",
    "online_prompts",
    "run_online_recipe",
]


def online_prompts(recipe: OnlineRecipe, tokenizer: Any = None, console: Console | None = None) -> PromptSplit:
    """The training and held-out prompts of the recipe's ``prompts:`` section, with each prompt's metadata.

    The section's kind is looked up in the prompt-source registry (:mod:`alignkit.data.prompt_sources`); prompts
    are rendered for ``tokenizer`` (the recipe's own, loaded when None), and, for sources that read rows, how
    many were read, kept and dropped (and why) is printed to ``console``.
    """
    p = recipe.prompts
    split = load_prompt_split(p, tokenizer if tokenizer is not None else load_tokenizer(recipe.model))
    if split.train_report.seen:
        (console or Console(stderr=True)).print(f"prompts ({p.kind}):\n{split.summary()}", markup=False,
                                                highlight=False)
    return split


def fitting_train_prompts(model: nn.Module, tokenizer: Any, prompts: list[str], cfg: OnlineConfig,
                          console: Console) -> tuple[list[str], int]:
    """The training prompts whose tokens plus ``online.max_new_tokens`` fit the model's context, and how many
    did not (printed); checked once here, not found out by an index error while sampling.

    Raises:
        DataError: no prompt fits.
    """
    kept, dropped = fitting_prompts(model, tokenizer, prompts, cfg.max_new_tokens)
    if dropped:
        config = getattr(model, "config", None)
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        why = (f"longer than the model's context ({context} tokens) minus online.max_new_tokens "
               f"({cfg.max_new_tokens})")
        if not kept:
            raise DataError(f"prompts: all {dropped} training prompts are {why}: use shorter prompts, a model with "
                            "a longer context, or a lower online.max_new_tokens")
        console.print(f"training prompts: dropped {dropped} of {len(prompts)}, {why}", markup=False,
                      highlight=False)
    return kept, dropped


def build_score(cfg: OnlineConfig, device: torch.device,
                metadata: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[str, ScoreFn]:
    """The reward as ``score(prompts, texts)``: a registered function, a weighted list of them, or a reward-model
    folder. A reward that reads examples receives each prompt's ``metadata`` (its reference answer)."""
    meta = metadata or {}

    def examples(prompts: list[str], texts: list[str]) -> list[RewardExample]:
        return [RewardExample(p, t, meta.get(p, {})) for p, t in zip(prompts, texts, strict=True)]

    if cfg.reward is not None:
        # One number per text within the time limit, or an error naming the reward.
        name, fn = resolve_example_reward(cfg.reward, timeout_s=cfg.reward_timeout_s)
        return name, lambda prompts, texts: fn(examples(prompts, texts))
    if cfg.rewards is not None:
        terms = {t.name: resolve_example_reward(t.name, timeout_s=cfg.reward_timeout_s, settings=t.settings)[1]
                 for t in cfg.rewards}
        weights = {t.name: t.weight for t in cfg.rewards}
        normalise = cfg.normalise_rewards

        def combined(prompts: list[str], texts: list[str]) -> RewardBreakdown:
            batch = examples(prompts, texts)
            parts = {name: reward_total(fn(batch)) for name, fn in terms.items()}
            total = weighted_sum(parts, weights, groups=prompts if normalise else None)
            return RewardBreakdown(total, parts)

        described = " + ".join(f"{t.weight:g}*{t.name}" for t in cfg.rewards)
        return described + (" (each normalised per prompt)" if normalise else ""), combined
    assert cfg.reward_model is not None  # OnlineConfig requires exactly one of reward, rewards and reward_model
    scorer = reward_model_scorer(cfg.reward_model, batch_size=cfg.reward_batch_size, device=device)
    return str(cfg.reward_model), lambda prompts, texts: scorer(list(zip(prompts, texts, strict=True)))


def build_true_score(cfg: OnlineConfig) -> ScoreFn | None:
    """``online.true_reward`` as ``score(prompts, texts)`` (measured on every rollout, never trained on), or None."""
    if cfg.true_reward is None:
        return None
    _, checked = resolve_reward(cfg.true_reward, timeout_s=cfg.reward_timeout_s)
    return lambda prompts, texts: checked(texts)


def describe_objective(cfg: OnlineConfig) -> str:
    """A one-line name of the objective for reports, e.g. ``rloo(k=4, beta=0.05, anchor=initial)`` or
    ``ppo(k=1, beta=0.05, anchor=initial, epochs=4, value=policy_head)``."""
    anchor = "initial" if cfg.anchor.kind == "initial" else f"ema({cfg.anchor.ema_rate:g})"
    kl = "" if cfg.kl_control.kind == "fixed" else f", target_kl={cfg.kl_control.target:g}"
    settings = ""
    if cfg.ppo is not None:
        settings = f", epochs={cfg.ppo.epochs}, value={cfg.ppo.value_model}"
    elif cfg.grpo is not None:
        g = cfg.grpo
        coef = f", kl_coef={g.kl_coef:g}" if g.kl_coef is not None else ""
        flags = [f"{name}=false" for name in ("scale_rewards", "length_normalise") if not getattr(g, name)]
        settings = ", ".join([f", iterations={g.iterations}, kl={g.kl}{coef}", *flags])
    base = f"{cfg.algorithm}(k={cfg.samples_per_prompt}, beta={cfg.beta:g}{kl}, anchor={anchor}{settings})"
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
        assert cfg.kl_control.target is not None  # KLControlConfig requires a target when adaptive
        return AdaptiveKLController(cfg.beta, cfg.kl_control.target, cfg.kl_control.k_beta)
    return FixedKLController(cfg.beta)


def _train(recipe: OnlineRecipe, policy, tokenizer, score: ScoreFn, prompts: list[str], *, run_dir: Path,
           seed: int, initial: ReferenceFn | None, stage: str, env: DistEnv, console: Console,
           resume: bool) -> OnlineResult:
    cfg = recipe.online
    anchor = EMAAnchor(policy, cfg.anchor.ema_rate) if cfg.anchor.kind == "ema" else FrozenAnchor(policy)
    trainer = OnlineTrainer(policy, tokenizer, score, cfg, recipe.train, prompts=prompts, anchor=anchor,
                            controller=_controller(cfg), run_dir=run_dir, initial=initial, seed=seed, stage=stage,
                            logps=recipe.model.logps, env=env, console=console,
                            true_score=build_true_score(cfg))
    return trainer.fit(resume=resume)


def _warp(recipe: OnlineRecipe, policy, tokenizer, score: ScoreFn, prompts: list[str], *, initial: ReferenceFn,
          theta_sft: dict[str, torch.Tensor], seed: int, results: dict[str, StageResult], env: DistEnv,
          console: Console, resume: bool) -> dict[str, torch.Tensor]:
    """I iterations of M runs from a shared start, merged by SLERP; LITI moves the start. Returns theta_final.

    Every process holds the same weights after each run, so every process merges to the same theta_final.
    """
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
            results[stage] = _train(recipe, policy, tokenizer, score, prompts,
                                    run_dir=recipe.run_dir() / "warp" / f"iter{i}_run{m}",
                                    seed=seed + m + warp.runs * i, initial=initial, stage=stage, env=env,
                                    console=console, resume=resume)
            finals.append(trainable_tensors(policy))
        merged = slerp_merge(theta_init, finals, eps=warp.eps)
        theta_init = liti(theta_init, merged, warp.liti_eta)
    return merged


def _front(recipe: OnlineRecipe, policy, tokenizer, eval_prompts: list[str], initial: ReferenceFn,
           theta_sft: dict[str, torch.Tensor], theta_final: dict[str, torch.Tensor],
           console: Console) -> list[dict[str, Any]]:
    """Reward and KL to the SFT model of (1 - eta) theta_sft + eta theta_final for every eta of the grid."""
    ev = recipe.eval
    assert recipe.online.warp is not None and ev is not None and ev.reward is not None
    points = []
    for eta in recipe.online.warp.front_etas:
        load_tensors(policy, interpolate(theta_sft, theta_final, eta))
        rep = evaluate_reward_kl(policy, initial, tokenizer, eval_prompts[: ev.num_prompts], ev.reward, ev.sampling,
                                 label=f"eta={eta:g}")
        console.print(f"warp front eta={eta:g}: reward {rep.reward.estimate:.3f}  kl {rep.kl.estimate:.2f}")
        points.append({"eta": eta, "reward": rep.reward.to_dict(), "kl": rep.kl.to_dict(),
                       "mean_length": rep.mean_length, "reward_name": rep.reward_name})
    load_tensors(policy, theta_final)
    return points


class OnlineRun(RecipeRun):
    """The :class:`~alignkit.workflow.RunPlan` of an online recipe: one run, or WARP's merged runs."""

    def __init__(self, recipe: OnlineRecipe) -> None:
        super().__init__(recipe, OnlineRecipe, online_recipe_to_yaml)
        self.recipe: OnlineRecipe = recipe
        self.train_prompts: list[str] = []
        self.eval_prompts: list[str] = []
        self.prompt_metadata: dict[str, dict[str, Any]] = {}
        self.score: ScoreFn | None = None
        self.initial: ReferenceFn | None = None

    def check_processes(self, world_size: int, device: torch.device) -> None:
        """A step splits into equal shares of whole prompts (``train.prompts_per_step``), before anything is
        written. (``distributed.strategy: fsdp`` is refused with the recipe: the online loop replicates.)"""
        super().check_processes(world_size, device)
        check_world_size(self.recipe.train.prompts_per_step, world_size)
        online = self.recipe.online
        if world_size > 1 and (online.rollout.engine == "server" or online.async_.max_staleness > 0):
            raise ValueError("online.rollout.engine: server and online.async.max_staleness: 1 run in one process; "
                             "start without --nproc")

    def load(self, ctx: RunContext) -> tuple[Any, PreTrainedModel]:
        return load_tokenizer(self.recipe.model), self.load_causal_lm(ctx.device)

    def prepare(self, ctx: RunContext) -> None:
        recipe = self.recipe
        split = online_prompts(recipe, ctx.tokenizer, ctx.console)
        train, self.eval_prompts, self.prompt_metadata = split.train, split.eval, split.metadata
        self.train_prompts, too_long = fitting_train_prompts(ctx.model, ctx.tokenizer, train, recipe.online,
                                                             ctx.console)
        reward_name, self.score = build_score(recipe.online, ctx.device, self.prompt_metadata)
        true = f" (true reward, measured only: {recipe.online.true_reward})" if recipe.online.true_reward else ""
        ctx.console.print(f"online: {len(self.train_prompts)} train / {len(self.eval_prompts)} held-out prompts, "
                          f"reward {reward_name}{true}")
        parts = Objective.of(recipe.online).describe()
        ctx.console.print(f"objective ({recipe.online.algorithm} preset, explicit parts override it):\n  "
                          + "\n  ".join(parts), markup=False, highlight=False)
        ctx.report.update({
            "recipe": recipe.name,
            "method": "warp" if recipe.online.warp else recipe.online.algorithm,
            "objective": describe_objective(recipe.online),
            "objective_parts": Objective.of(recipe.online).describe(),
            "online": recipe.online.model_dump(mode="json"),
            "train_prompts": len(self.train_prompts),
            "train_prompts_too_long": too_long,
            "heldout_prompts": len(self.eval_prompts),
        })

    def train(self, ctx: RunContext) -> None:
        recipe, policy, score = self.recipe, ctx.model, self.score
        assert score is not None
        seed = recipe.train.seed if recipe.train.seed is not None else recipe.seed
        # Every process starts from rank 0's weights (a fresh adapter included): the anchors copy them next.
        broadcast_parameters([p for p in policy.parameters() if p.requires_grad], ctx.env)
        # The initial policy, exactly: its trainable tensors swapped back in (no second model in memory).
        initial_anchor = FrozenAnchor(policy)
        self.initial = initial = initial_anchor.model_context
        results = ctx.results
        if recipe.online.warp is None:
            anchor_is_initial = recipe.online.anchor.kind == "initial"
            results["online"] = _train(recipe, policy, ctx.tokenizer, score, self.train_prompts,
                                       run_dir=ctx.run_dir / "online", seed=seed,
                                       initial=None if anchor_is_initial else initial, stage="online",
                                       env=ctx.env, console=ctx.console, resume=ctx.resume)
        else:
            theta_sft = initial_anchor.tensors
            theta_final = _warp(recipe, policy, ctx.tokenizer, score, self.train_prompts, initial=initial,
                                theta_sft=theta_sft, seed=seed, results=results, env=ctx.env,
                                console=ctx.console, resume=ctx.resume)
            load_tensors(policy, theta_final)
            # Evaluation is the main process's (it writes the report); the others are done.
            if ctx.env.is_main and recipe.eval is not None and recipe.eval.reward is not None:
                ctx.report["warp_front"] = _front(recipe, policy, ctx.tokenizer, self.eval_prompts, initial,
                                                  theta_sft, theta_final, ctx.console)

    def evaluate(self, ctx: RunContext) -> dict[str, Any]:
        """The ``eval:`` section; with ``online.true_reward``, also the proxy and true reward of the same
        held-out samples before and after (``proxy_vs_true``) and the plot of both against the training KL
        (``plots/proxy_vs_true.png``). Main process only (the skeleton calls it there)."""
        out: dict[str, Any] = {}
        true_reward = self.recipe.online.true_reward
        if true_reward is not None:
            metrics = sorted(ctx.run_dir.glob("online/metrics.jsonl")) or sorted(ctx.run_dir.glob("warp/*/metrics.jsonl"))
            if metrics:
                labels = ["online" if m.parent.name == "online" else m.parent.name for m in metrics]
                plot = plot_proxy_vs_true(metrics, ctx.run_dir / "plots" / "proxy_vs_true.png", labels=labels,
                                          title=f"{self.recipe.name}: proxy vs true reward ({true_reward})")
                out["proxy_vs_true_plot"] = str(plot.relative_to(ctx.run_dir))
        if self.recipe.accuracy is not None:
            out["accuracy"] = self.accuracy(ctx)
        if self.recipe.eval is None:
            return out
        assert self.initial is not None
        # The initial model is both the untuned model and the reference of the held-out KL.
        out.update(evaluate_heldout(self.recipe.eval, ctx.model, self.initial, ctx.tokenizer, self.eval_prompts, None,
                                    run_dir=ctx.run_dir, console=ctx.console, device=str(ctx.device),
                                    base=self.initial))
        if true_reward is not None and self.score is not None:
            score = self.score
            proxy = lambda prompts, texts: reward_total(score(prompts, texts))  # noqa: E731 - a combined reward's total
            ev = self.recipe.eval
            prompts = self.eval_prompts[: ev.num_prompts] if ev.num_prompts else self.eval_prompts
            with self.initial() as initial_model:
                before = evaluate_proxy_and_true(initial_model, None, ctx.tokenizer, prompts, proxy,
                                                 true_reward, ev.sampling, label="initial")
            after = evaluate_proxy_and_true(ctx.model, self.initial, ctx.tokenizer, prompts, proxy,
                                            true_reward, ev.sampling, label="policy")
            out["proxy_vs_true"] = {"true_reward_name": after["true_reward_name"], "before": before, "after": after}
            ctx.console.print(f"proxy vs true reward: proxy {before['proxy_reward']['estimate']:.3f} -> "
                              f"{after['proxy_reward']['estimate']:.3f}, true {before['true_reward']['estimate']:.3f}"
                              f" -> {after['true_reward']['estimate']:.3f} at KL {after['kl']['estimate']:.2f}")
        return out


    def accuracy(self, ctx: RunContext) -> dict[str, Any]:
        """pass@k of the initial and the trained model on the first ``accuracy.num_problems`` held-out problems
        (the same samples' seed for both), printed and returned for the report."""
        acc = self.recipe.accuracy
        assert acc is not None and self.initial is not None
        name, score = resolve_example_reward(acc.reward.name, settings=acc.reward.settings,
                                             timeout_s=self.recipe.online.reward_timeout_s)
        problems = self.eval_prompts[: acc.num_problems]
        args = (ctx.tokenizer, problems, self.prompt_metadata, score, acc.sampling)
        with self.initial() as initial_model:
            before = evaluate_accuracy(initial_model, *args, ks=acc.ks, threshold=acc.threshold, label="initial")
        after = evaluate_accuracy(ctx.model, *args, ks=acc.ks, threshold=acc.threshold, label="policy")
        ctx.console.print(f"accuracy ({name}, {len(problems)} held-out problems, {acc.samples} samples each, "
                          "95% intervals):\n  " + "\n  ".join(accuracy_lines(before, after)),
                          markup=False, highlight=False)
        return {"reward": name, "threshold": acc.threshold, "before": before, "after": after}


def run_online_recipe(recipe: OnlineRecipe, *, resume: bool = False, overwrite: bool = False,
                      console: Console | None = None) -> RunSummary:
    """Train (one run of ``online.algorithm``, or WARP), save the model, evaluate reward and KL to the initial model, write the report.

    With ``resume``, every run continues from its latest checkpoint (finished WARP runs are reloaded, not
    retrained), so an interrupted recipe picks up where it stopped.
    """
    return execute_run(OnlineRun(recipe), resume=resume, overwrite=overwrite, console=console)
