"""Write docs/losses.md from the loss registry (``--check``: exit 1 when the file is out of date).

Usage:
    python scripts/gen_loss_docs.py           # regenerate
    python scripts/gen_loss_docs.py --check   # CI: fail on drift
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignkit.losses.docs import render_losses_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "losses.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when it differs")
    parser.add_argument("--output", type=Path, default=DOCS, help=f"where to write (default: {DOCS})")
    args = parser.parse_args(argv)
    text = render_losses_markdown()
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is out of date; run: python scripts/gen_loss_docs.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if current != text:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(f"{args.output} unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
