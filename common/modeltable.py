"""The README's model table, generated from the model data files (the numbers live there only).

    python3 -m common.modeltable            # print the table
    python3 -m common.modeltable --update   # rewrite it in README.md between the markers
"""

from __future__ import annotations

import sys

from common.spec import MODELS, REPO_ROOT, load_spec

BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"


def _fmt_fps(fig: dict) -> str:
    return ", ".join(f"bs{b} {v:g}" for b, v in fig["fps"].items())


HEADER = ("model", "tool", "input", "published accuracy (seed)", "published throughput (seed, fps)")


def model_rows() -> list[tuple[str, ...]]:
    """One row of cells (Markdown text) per model, in HEADER's order (the results page shows them too)."""
    rows = []
    for name in MODELS:
        spec = load_spec(name)
        acc = "; ".join(f"{a['metric']} {a['value']:g} ({a['backend']}, {a['device']})"
                        for a in spec.published.get("accuracy", []))
        fps = "; ".join(f"{t['device']}: {_fmt_fps(t)}" for t in spec.published.get("throughput", []))
        c, h, w = spec.input.shape
        rows.append((spec.title, f"`tools/{name}` ({spec.status})", f"{spec.input.dtype} {c}x{h}x{w}, "
                     f"bs {'/'.join(map(str, spec.input.batch_sizes))}", acc, fps))
    return rows


def model_table() -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in model_rows()]
    return "\n".join(lines)


def update_readme(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{model_table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--update" in sys.argv:
        readme = REPO_ROOT / "README.md"
        readme.write_text(update_readme(readme.read_text()))
    else:
        print(model_table())
