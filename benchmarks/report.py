"""Turn a results directory's rows into the markdown table, a JSON file and the BLEU-vs-params plot.

Used by ``examples.multi30k.run`` at the end of a run; can also be re-run alone on a finished (or
partially finished) results directory: ``python -m benchmarks.report results/multi30k-full``.
"""

import json
import sys
from pathlib import Path
from typing import Dict

COLUMNS = (
    ("row", "row"),
    ("description", "what"),
    ("embedding_params", "emb. params"),
    ("total_params", "total params"),
    ("bleu", "BLEU"),
    ("bleu_vs_teacher", "Δ teacher"),
    ("reconstruction_error", "recon. rel. err"),
    ("updates", "updates"),
    ("updates_with_teacher", "updates incl. teacher"),
    ("train_seconds", "train s"),
    ("eval_seconds", "test decode s"),
    ("sentences_per_second", "decode sent/s"),
    ("decode_vs_teacher", "decode × teacher"),
    ("checkpoint_bytes", "ckpt MB"),
    ("exported_bytes", "fp16 export MB"),
)


def cell(key, value):
    if value is None:
        return "–"
    if key.endswith("_bytes"):
        return f"{value / 1e6:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if key == "reconstruction_error" else f"{value:.2f}"
    return str(value)


def versus_teacher(rows: Dict[str, Dict]) -> Dict[str, Dict]:
    """Each row with its BLEU difference and decode-speed ratio against the teacher's row."""
    teacher = rows.get("teacher", {})
    compared = {}
    for name, row in rows.items():
        row = dict(row)
        if teacher.get("bleu") is not None and row.get("bleu") is not None:
            row["bleu_vs_teacher"] = round(row["bleu"] - teacher["bleu"], 2)
        if row.get("updates") is not None:  # a student also had every update of its teacher
            row["updates_with_teacher"] = row["updates"] + (
                teacher.get("updates", 0) if row.get("from_teacher") else 0)
        if teacher.get("sentences_per_second") and row.get("sentences_per_second"):
            row["decode_vs_teacher"] = round(
                row["sentences_per_second"] / teacher["sentences_per_second"], 2)
        compared[name] = row
    return compared


def markdown_table(rows: Dict[str, Dict]) -> str:
    rows = versus_teacher(rows)
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        values = {**row, "row": name}
        lines.append("| " + " | ".join(cell(key, values.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def split_size(name: str):
    """``("distilled", "8x")`` for ``distilled_8x`` (also ``distilled_8x+both``); ``(name, None)``
    for a row without a ``_<N>x`` size suffix."""
    base = name.split("+")[0]
    stem, _, size = base.rpartition("_")
    return (stem, size) if size.endswith("x") and size[:-1].isdigit() else (base, None)


def method_of(name: str) -> str:
    """The frontier line a row belongs to: its name without the size (with its training data)."""
    data = name.split("+", 1)[1] if "+" in name else None
    return split_size(name)[0] + (f" ({data} data)" if data else "")


def plot(rows: Dict[str, Dict], path: Path, title: str) -> bool:
    """Save ``frontier_figure`` to ``path`` (False, nothing written, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure = frontier_figure(rows, title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def frontier_figure(rows: Dict[str, Dict], title: str):
    """sacreBLEU against total parameters and against the fp16 export's MB: one line per method
    (its sizes joined, labelled by compression), the teacher a star. A method keeps its colour
    in both panels, and the legend sits in the first, where every method is drawn (a row may
    lack an export size, not a parameter count)."""
    import matplotlib.pyplot as plt

    methods: Dict[str, list] = {}
    for name, row in rows.items():
        if row.get("bleu") is not None and row.get("total_params"):
            methods.setdefault("teacher" if name == "teacher" else method_of(name), []).append(
                (name, row))
    panels = [("total_params", 1.0, "total parameters"),
              ("exported_bytes", 1e-6, "fp16 export (MB)")]
    if not any(row.get("exported_bytes") for row in rows.values()):
        panels = panels[:1]  # a table without export sizes: one panel, not an empty one
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), sharey=True,
                                squeeze=False)
    axes = axes[0]
    for axis, (key, scale, label) in zip(axes, panels):
        for index, (method, members) in enumerate(sorted(methods.items())):
            points = sorted((row[key] * scale, row["bleu"], name) for name, row in members
                            if row.get(key))
            if not points:
                continue
            xs, ys, names = zip(*points)
            style = dict(marker="*", markersize=14) if method == "teacher" else dict(marker="o")
            axis.plot(xs, ys, linestyle="-" if len(xs) > 1 else "none", label=method,
                      color=f"C{index % 10}", **style)
            for number, (x, y, name) in enumerate(zip(xs, ys, names)):
                if method != "teacher" and len(xs) > 1:  # sizes on lines; the legend names singles
                    axis.annotate(split_size(name)[1] or name, (x, y), fontsize=7,
                                  textcoords="offset points",
                                  xytext=(5, -10 if (index + number) % 2 else 5))
        axis.set_xlabel(label)
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("sacreBLEU (test_2016_flickr)")
    axes[0].legend(fontsize=7, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def direction(meta: Dict) -> str:
    """``De→En`` from the run's language pair (older results, written before the recipe took
    --source-lang/--target-lang, are De→En)."""
    source, target = meta.get("pair") or ("de", "en")
    return f"{source.capitalize()}→{target.capitalize()}"


def write_report(results: Path, rows: Dict[str, Dict], meta: Dict) -> str:
    """Write results.json, results.md and frontier.png under ``results``; return the table."""
    table = markdown_table(rows)
    signature = next((row["signature"] for row in rows.values() if row.get("signature")), "")
    (results / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    title = f"Multi30k {direction(meta)}, {meta.get('profile')} profile ({meta.get('device')})"
    plotted = plot(rows, results / "frontier.png", title)
    text = "\n\n".join(filter(None, [
        f"# {title}",
        meta.get("notes", ""),
        table,
        f"sacreBLEU signature: `{signature}`",
        f"Command: `{meta.get('command', '')}`",
        "![BLEU against total parameters and fp16 export size](frontier.png)" if plotted else "",
    ]))
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    saved = json.loads((directory / "results.json").read_text())
    print(write_report(directory, saved["rows"], saved["meta"]))
