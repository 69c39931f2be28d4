"""The `alignkit` command: parsing and printing only; the work lives in the library."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignkit.cache import DiskFullError
from alignkit.online.presets import PRESETS

__all__ = ["main"]

_err = Console(stderr=True)
_out = Console()

PLUGIN_HELP = ("Python file or module to import first (repeatable); its import registers what it defines: losses, "
               "reward functions, data sources, judges, online parts (advantages, policy losses, ...)")


def _progress_console() -> Console:
    """Where a run's progress goes: stderr, from the main process only (under --nproc N or torchrun the others
    train silently; their errors still print)."""
    return Console(stderr=True, quiet=int(os.environ.get("RANK", "0")) > 0)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (recipe, data, model names): shown as a message, not a traceback."""
    from alignkit.data.types import DataError
    from alignkit.losses import ObjectiveError
    from alignkit.models.load import ModelLoadError
    from alignkit.models.smollm2 import SmolLM2FetchError
    from alignkit.plugins import PluginError
    from alignkit.recipe import RecipeError
    from alignkit.registry import RegistryError

    # ValueError: settings that are valid one by one but not together (found while running).
    return (RecipeError, DataError, ModelLoadError, SmolLM2FetchError, ObjectiveError, PluginError, RegistryError,
            FileNotFoundError, FileExistsError, ValueError)


def _peer_failed(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that broke because another process of the run exited."""
    text = str(err)
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and (
        type(err).__name__ == "DistNetworkError" or "closed by peer" in text or "reset by peer" in text)


def _cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "validate", False):  # `alignkit online --validate`
        return _cmd_validate(args)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # started by us, not already by torchrun
        from alignkit.commands.launch import launch_processes

        return launch_processes(args.nproc, args.argv, args.recipe, args.overrides, args.plugin, _err)
    from alignkit.commands.run import run_recipe_file

    progress = _progress_console()
    summary = run_recipe_file(args.recipe, args.overrides, args.plugin, resume=args.resume,
                              overwrite=args.overwrite, online_only=args.command == "online", console=progress)
    progress.print(f"[green]done[/]: {summary.run_dir}")
    return 0


def _cmd_frontier(args: argparse.Namespace) -> int:
    from alignkit.commands.frontier import draw_frontier

    path = draw_frontier(args.run_dirs, args.comparison, args.out, args.title, args.data)
    written = f"{path}" + (f", {args.data}" if args.data else "")
    _err.print(f"[green]written[/]: {written}" if path else "[yellow]no run has a reward and a KL to plot[/]")
    return 0 if path else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from alignkit.commands.validate import validate_recipe_file

    description = validate_recipe_file(args.recipe, args.overrides, args.plugin)
    _out.print(f"[green]ok[/]: {escape(args.recipe)} ({escape(description)})")
    return 0


def _cmd_losses(args: argparse.Namespace) -> int:
    from alignkit.losses import list_losses
    from alignkit.losses.docs import render_losses_markdown
    from alignkit.plugins import load_plugins

    load_plugins(args.plugin)
    if args.markdown:
        _out.print(render_losses_markdown(list_losses()), markup=False, highlight=False)
        return 0
    table = Table(title="registered objectives")
    for column in ("name", "needs", "parameters (default)", "description"):
        table.add_column(column, overflow="fold")
    for spec in list_losses():
        params = ", ".join(f"{n}={f.default!r}" for n, f in spec.config.model_fields.items())
        needs = spec.inputs.name + (" + reference" if spec.needs_reference else "")
        if spec.reference_rule is not None:  # a parameter decides; the above is the defaults'
            needs += " (by default; see its parameters)"
        table.add_row(spec.name, needs, params or "-", spec.description)
    _out.print(table)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from alignkit.models.load import fetch_model

    path = fetch_model(args.model)
    _out.print(f"[green]ready[/]: {args.model} -> {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from alignkit.commands.eval import evaluate_run
    from alignkit.eval.judges.openai_compat import JudgeRequestError

    try:
        evaluate_run(args.run_dir, args.overrides, plugins=args.plugin, console=_err, device=args.device,
                     redo_reward_kl=args.redo_reward_kl)
    except (ValueError, JudgeRequestError) as err:  # settings that cannot work: a message, not a traceback
        _error(str(err))
        return 2
    _err.print(f"[green]done[/]: {args.run_dir}/report.md")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from alignkit.commands.export import export_run

    folder = export_run(args.run, args.format, args.out, overwrite=args.overwrite, model=args.model)
    _err.print(f"[green]exported[/] ({args.format}): {escape(str(folder))}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from alignkit.commands.serve import ChatModel, ServerLimits, make_server
    from alignkit.workflow.model_io import load_run_model

    weights_root = None if args.allow_weights_from is None else Path(args.allow_weights_from)
    if weights_root is not None and not weights_root.is_dir():  # before the model loads
        raise ValueError(f"--allow-weights-from: {weights_root} is not a folder")
    model, tokenizer = load_run_model(args.model, tokenizer=args.tokenizer, device=args.device)
    chat = ChatModel(model, tokenizer, args.name or str(args.model), max_tokens=args.max_tokens,
                     weights_root=weights_root, max_adapters=args.max_adapters)
    server = make_server(chat, args.host, args.port, limits=ServerLimits(max_pending=args.max_pending),
                         log=None if args.quiet else lambda line: _err.print(line, markup=False, highlight=False))
    host, port = server.server_address[:2]
    assert isinstance(host, str), "an IPv4/IPv6 server's address is a host name"
    _err.print(f"[green]serving[/] {escape(str(args.model))} at http://{host}:{port}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from alignkit.commands.compare import run_comparison
    from alignkit.commands.compare_plan import parse_seeds

    losses = [name.strip() for name in args.losses.split(",") if name.strip()]
    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    result = run_comparison(args.recipe, losses, sweeps=args.sweep, overrides=args.overrides, plugins=args.plugin,
                            out=args.out, overwrite=args.overwrite, online=args.online, seeds=seeds,
                            baseline=args.baseline, console=_err)
    failed = [o.plan.label for o in result.outcomes if o.status == "failed"]
    failed += [e.run_dir.name for e in result.online if e.status == "failed"]
    _err.print(f"[green]done[/]: {result.out_dir}" + (f" ([red]failed: {', '.join(failed)}[/])" if failed else ""))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align language models from preference data.")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.beta=0.2 train.max_steps=50")
        p.add_argument("--plugin", action="append", default=[], help=PLUGIN_HELP)
        return p

    def processes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="start N processes on this machine (torchrun); see docs/distributed.md")

    run = recipe_command("run", "Train and evaluate a recipe end to end.")
    run.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace the run the run folder holds (cleared first)")
    processes(run)
    run.set_defaults(func=_cmd_run)
    recipe_command("validate", "Check a recipe (and overrides) without training it. It imports the recipe's "
                   "plugins (code that runs, as `run` would) and names each one.").set_defaults(func=_cmd_validate)
    presets = ", ".join(PRESETS)
    online = recipe_command("online", f"Train and evaluate an online recipe (online.algorithm: {presets}, or parts "
                            "of your own; optionally with WARP; see docs/online.md).")
    online.add_argument("--validate", action="store_true", help="only check the recipe")
    online.add_argument("--resume", action="store_true", help="continue every run from its latest checkpoint")
    online.add_argument("--overwrite", action="store_true", help="replace the run the run folder holds (cleared first)")
    processes(online)
    online.set_defaults(func=_cmd_run)
    frontier = sub.add_parser("frontier", help="Plot online runs (and offline comparisons) on one reward-vs-KL plot.")
    frontier.add_argument("run_dirs", nargs="*", help="online run folders (their report.json)")
    frontier.add_argument("--comparison", action="append", default=[], help="comparison.json of `alignkit compare`")
    frontier.add_argument("--out", default="frontier.png", help="PNG file to write")
    frontier.add_argument("--title", default="", help="figure title")
    frontier.add_argument("--data", default=None, help="also write the plotted points (every seed, means with "
                          "intervals, reference, curves) to this JSON file")
    frontier.set_defaults(func=_cmd_frontier)

    compare = recipe_command("compare", "Run several objectives on the same data, model, seed and budget; "
                             "tabulate and plot them side by side.")
    compare.add_argument("--losses", default="",
                         help="comma-separated objectives, e.g. dpo,ipo,slic_hf,simpo,orpo; omitted: the recipe is "
                         "an online recipe (or run folder) compared with the --online ones alone")
    compare.add_argument("--sweep", action="append", default=[],
                         help="loss parameter values, e.g. loss.beta=0.05,0.1,0.5 (repeatable: a grid)")
    compare.add_argument("--out", default=None, help="comparison folder (default runs/compare_<recipe name>)")
    compare.add_argument("--overwrite", action="store_true", help="retrain run folders that hold a different recipe")
    compare.add_argument("--online", action="append", default=[],
                         help="online run folder or online recipe (RLOO, WARP) to place on the same reward-vs-KL "
                         "plot; a recipe is run first unless its folder is complete (repeatable)")
    compare.add_argument("--seeds", default=None, metavar="S1,S2,...",
                         help="train every method once per seed, e.g. 0,1,2; the table adds the mean and a 95%% "
                         "interval across seeds and paired differences against --baseline")
    compare.add_argument("--baseline", default=None, metavar="METHOD",
                         help="with --seeds: the method (label without _seed<s>, e.g. dpo_beta0.1) every other "
                         "one is compared with, seed by seed (default: the first)")
    compare.set_defaults(func=_cmd_compare)

    losses = sub.add_parser("losses", help="List registered objectives with their parameters.")
    losses.add_argument("--plugin", action="append", default=[], help=PLUGIN_HELP)
    losses.add_argument("--markdown", action="store_true", help="print the Markdown reference (docs/losses.md)")
    losses.set_defaults(func=_cmd_losses)

    fetch = sub.add_parser("fetch", help="Fetch and convert a built-in model alias (e.g. smollm2-135m-instruct).")
    fetch.add_argument("model")
    fetch.set_defaults(func=_cmd_fetch)

    evaluate = sub.add_parser("eval", help="Judge a finished run against its baseline; add to its report and plots.")
    evaluate.add_argument("run_dir", help="run folder written by `alignkit run`")
    evaluate.add_argument("overrides", nargs="*",
                          help="dotted recipe overrides, e.g. eval.judge.kind=reward eval.judge.reward=vader_sentiment")
    evaluate.add_argument("--plugin", action="append", default=[],
                          help="file or module to import (repeatable): the run folder's own plugins are never "
                          "imported, name the ones the run used here")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    evaluate.add_argument("--redo-reward-kl", action="store_true", help="recompute reward/KL even if the report has it")
    evaluate.set_defaults(func=_cmd_eval)

    export = sub.add_parser("export", help="Write a run's trained model as a PEFT adapter or a transformers folder.")
    export.add_argument("run", help="run folder (its model/) or model folder")
    export.add_argument("--format", required=True, choices=["peft", "merged", "hf"],
                        help="peft: LoRA adapter for PEFT; merged: transformers folder, LoRA folded in; hf: "
                        "transformers folder of the base plus the alignkit adapter files")
    export.add_argument("--model", default="policy", choices=["policy", "value"],
                        help="policy: the trained model; value: a PPO run's value model (--format merged: a "
                        "transformers token classifier whose one logit is the value)")
    export.add_argument("--out", default=None, help="destination folder (default <run>/export-<format>)")
    export.add_argument("--overwrite", action="store_true", help="replace the destination if it exists")
    export.set_defaults(func=_cmd_export)

    serve = sub.add_parser("serve", help="OpenAI-compatible (chat) completions server over a model or run folder, "
                                         "with vLLM's adapter loading.")
    serve.add_argument("model", help="model folder, run folder (uses its model/) or built-in alias")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    serve.add_argument("--name", default=None, help="model id reported to clients (default: the path)")
    serve.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    serve.add_argument("--quiet", action="store_true", help="do not print a line per request")
    serve.add_argument("--max-tokens", type=int, default=1024,
                       help="most tokens one request may generate (capped below the model's context)")
    serve.add_argument("--max-pending", type=int, default=8,
                       help="requests generating or waiting at once; more are answered 503")
    serve.add_argument("--allow-weights-from", default=None, metavar="DIR",
                       help="accept POST /v1/load_lora_adapter and /v1/load_weights for folders inside DIR "
                            "(default: loading weights is refused)")
    serve.add_argument("--max-adapters", type=int, default=4,
                       help="LoRA versions kept at once; loading one more forgets the oldest")
    serve.set_defaults(func=_cmd_serve)
    return parser


def _continue_hint(args: argparse.Namespace) -> str:
    """How to continue what Ctrl-C stopped: the command that does it, where there is one."""
    again = [arg for arg in args.argv if arg not in ("--overwrite", "--resume")]
    if args.command in ("run", "online"):
        return ("continue from the last checkpoint with: "
                + shlex.join(["alignkit", *again, "--resume"]))
    if args.command == "compare":
        return ("continue with the same command (finished runs are reused, an interrupted one resumes from its "
                "last checkpoint): " + shlex.join(["alignkit", *again]))
    return "stopped; nothing to resume"


def main(argv: Sequence[str] | None = None) -> int:
    from alignkit.progress import quiet_library_bars

    quiet_library_bars()  # a log (`make demo > log 2>&1`) gets no model-loading bars redrawn line by line
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`compare r.yaml --losses dpo train.max_steps=4`); argparse stops at them.
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--nproc` starts again in each process
    if os.environ.get("ALIGNKIT_LAUNCHER_PID"):  # a process started by `--nproc`: stop when its launcher dies
        from alignkit.commands.launch import watch_launcher

        watch_launcher()
    try:
        return args.func(args)
    except _user_errors() as err:
        if os.environ.get("ALIGNKIT_DEBUG"):
            raise
        _error(str(err))
        _err.print("(set ALIGNKIT_DEBUG=1 for the traceback)", style="dim")
        return 2
    except DiskFullError as err:  # not the input's fault (exit 1), but nothing a traceback would explain
        _error(str(err))
        return 1
    except RuntimeError as err:
        from alignkit.train.distributed import describe_timeout

        if (timed_out := describe_timeout(err)) is not None:
            _error(timed_out)
            return 1
        if not _peer_failed(err):
            raise
        # Under torchrun another process failed first and printed its own error; this one only lost it.
        _err.print(f"[yellow]stopped[/]: another process of this run failed ({escape(str(err).splitlines()[0])})")
        return 1
    except KeyboardInterrupt:
        # soft_wrap: the command stays on one line, to be copied as printed
        _err.print(f"[yellow]interrupted[/]: {escape(_continue_hint(args))}", highlight=False, soft_wrap=True)
        return 130


def _error(message: str) -> None:
    """``message`` as one line on stderr, however wide the terminal (or a log file: no wrapping at 80 columns)."""
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
