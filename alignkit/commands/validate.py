"""`alignkit validate`: check a recipe (offline or online) and its overrides without running it.

Validation imports the recipe's plugins (that is how their losses and rewards come to exist), so the
description it returns names every plugin file it imported: a recipe's plugins are code that ran.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.recipe import load_recipe
from alignkit.recipe.online import is_online_recipe, load_online_recipe
from alignkit.recipe.rules import unused_reference_note

__all__ = ["validate_recipe_file"]


def _plugins_note(records: Sequence[dict[str, str] | str]) -> str:
    names = [r["path"] if isinstance(r, dict) else r for r in records]
    return f", imported plugins: {', '.join(names)}" if names else ""


def validate_recipe_file(path: str, overrides: Sequence[str] = (), plugins: Sequence[str] = ()) -> str:
    """Validate the recipe at ``path``; return a one-line description of what it would run.

    The description names the run folder, the objective (offline recipes) and every plugin imported, and
    notes a ``reference.mode`` the objective does not use.

    Raises:
        RecipeError: every problem, with its file, line and path.
    """
    if is_online_recipe(path):
        online = load_online_recipe(path, list(overrides), list(plugins))
        return f"online, run folder {online.run_dir()}{_plugins_note(online.plugin_files)}"
    recipe = load_recipe(path, list(overrides), list(plugins))
    note = unused_reference_note(recipe)
    return (f"objective {recipe.objective().describe()}, run folder {recipe.run_dir()}"
            f"{_plugins_note(recipe.plugin_files)}{f'; note: {note}' if note else ''}")
