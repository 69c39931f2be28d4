"""Write the generated reference pages, docs/losses.md, docs/online_parts.md and docs/recipe.md (``--check``: exit 1 on drift).

Usage:
    python scripts/gen_docs.py           # regenerate
    python scripts/gen_docs.py --check   # fail when a checked-in page is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignkit.losses.docs import render_losses_markdown
from alignkit.online.parts.docs import render_online_parts_markdown
from alignkit.recipe.docs import render_recipe_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = {"losses.md": render_losses_markdown, "online_parts.md": render_online_parts_markdown,
         "recipe.md": render_recipe_markdown}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a page differs")
    args = parser.parse_args(argv)
    stale = []
    for name, render in PAGES.items():
        path, text = DOCS / name, render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run: python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
