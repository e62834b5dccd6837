"""Turn a results directory's rows into the markdown table, a JSON file and the BLEU-vs-params plot.

Used by ``examples/multi30k/run.py`` at the end of a run; can also be re-run alone on a finished (or
partially finished) results directory: ``python benchmarks/report.py results/multi30k-full``.
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
    ("train_seconds", "train s"),
    ("eval_seconds", "test decode s"),
    ("sentences_per_second", "decode sent/s"),
    ("decode_vs_teacher", "decode × teacher"),
    ("checkpoint_bytes", "ckpt MB"),
    ("exported_bytes", "fp16 export MB"),
)


def _cell(key, value):
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
        lines.append("| " + " | ".join(_cell(key, values.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: Dict[str, Dict], path: Path, title: str) -> bool:
    """BLEU against embedding parameters, one labelled point per row (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, row in rows.items():
        if row.get("bleu") is None or row.get("embedding_params") is None:
            continue
        marker = "*" if name == "teacher" else ("o" if name.startswith("distilled") else "s")
        axis.scatter(row["embedding_params"], row["bleu"], marker=marker, s=80)
        axis.annotate(name, (row["embedding_params"], row["bleu"]), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("embedding parameters")
    axis.set_ylabel("sacreBLEU (test_2016_flickr)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_report(results: Path, rows: Dict[str, Dict], meta: Dict) -> str:
    """Write results.json, results.md and bleu_vs_params.png under ``results``; return the table."""
    table = markdown_table(rows)
    signature = next((row["signature"] for row in rows.values() if row.get("signature")), "")
    (results / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    plotted = plot(rows, results / "bleu_vs_params.png",
                   f"Multi30k De→En, {meta.get('profile')} profile ({meta.get('device')})")
    text = "\n\n".join(filter(None, [
        f"# Multi30k results ({meta.get('profile')} profile, {meta.get('device')})",
        meta.get("notes", ""),
        table,
        f"sacreBLEU signature: `{signature}`",
        f"Command: `{meta.get('command', '')}`",
        "![BLEU vs embedding parameters](bleu_vs_params.png)" if plotted else "",
    ]))
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    saved = json.loads((directory / "results.json").read_text())
    print(write_report(directory, saved["rows"], saved["meta"]))
