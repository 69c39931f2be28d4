"""The `alignkit` command: parsing and printing only; the work lives in the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["main"]

_err = Console(stderr=True)
_out = Console()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (recipe, data, model names): shown as a message, not a traceback."""
    from alignkit.data.types import DataError
    from alignkit.losses import ObjectiveError
    from alignkit.models.load import ModelLoadError
    from alignkit.models.smollm2 import SmolLM2FetchError
    from alignkit.plugins import PluginError
    from alignkit.recipe import RecipeError
    from alignkit.registry import RegistryError

    return (RecipeError, DataError, ModelLoadError, SmolLM2FetchError, ObjectiveError, PluginError, RegistryError,
            FileNotFoundError)


def _cmd_run(args: argparse.Namespace) -> int:
    from alignkit.pipeline import run_recipe
    from alignkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides, args.plugin)
    summary = run_recipe(recipe, resume=args.resume, console=_err)
    _err.print(f"[green]done[/]: {summary.run_dir}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from alignkit.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides, args.plugin)
    objective = recipe.objective()
    _out.print(f"[green]ok[/]: {args.recipe} (objective {objective.describe()}, run folder {recipe.run_dir()})")
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
        needs = spec.inputs + (" + reference" if spec.needs_reference else "")
        table.add_row(spec.name, needs, params or "-", spec.description)
    _out.print(table)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from alignkit.models.load import resolve_model_path

    path = resolve_model_path(args.model)
    _out.print(f"[green]ready[/]: {args.model} -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align language models from preference data.")
    sub = parser.add_subparsers(dest="command", required=True)

    def recipe_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.beta=0.2 train.max_steps=50")
        p.add_argument("--plugin", action="append", default=[], help="file or module registering losses (repeatable)")
        return p

    run = recipe_command("run", "Train and evaluate a recipe end to end.")
    run.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    run.set_defaults(func=_cmd_run)
    recipe_command("validate", "Check a recipe (and overrides) without running it.").set_defaults(func=_cmd_validate)

    losses = sub.add_parser("losses", help="List registered objectives with their parameters.")
    losses.add_argument("--plugin", action="append", default=[], help="file or module registering losses")
    losses.add_argument("--markdown", action="store_true", help="print the Markdown reference (docs/losses.md)")
    losses.set_defaults(func=_cmd_losses)

    fetch = sub.add_parser("fetch", help="Fetch and convert a built-in model alias (e.g. smollm2-135m-instruct).")
    fetch.add_argument("model")
    fetch.set_defaults(func=_cmd_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as err:
        _err.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        _err.print("[yellow]interrupted[/]: rerun with --resume to continue from the last checkpoint")
        return 130


if __name__ == "__main__":
    sys.exit(main())
