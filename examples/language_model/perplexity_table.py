"""The language-model recipe's report: results.json and the perplexity table of results.md, each
cell formatted as the translation recipe's BLEU table (benchmarks/report.py) formats it. Apart from
``run.py`` because it only reads the rows' summaries: nothing here runs a stage."""

import json
from pathlib import Path
from typing import Dict

from benchmarks import report

COLUMNS = (
    ("row", "row"),
    ("description", "what"),
    ("embedding_params", "emb. params"),
    ("total_params", "total params"),
    ("perplexity", "test ppl"),
    ("reconstruction_error", "recon. rel. err"),
    ("train_seconds", "train s"),
    ("eval_tokens_per_second", "eval tok/s"),
    ("checkpoint_bytes", "ckpt MB"),
)


def markdown_table(rows: Dict[str, Dict]) -> str:
    """The perplexity table (cells formatted as benchmarks/report.py formats the BLEU table)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        values = {**row, "row": name}
        lines.append("| " + " | ".join(report.cell(key, values.get(key)) for key, _ in COLUMNS)
                     + " |")
    return "\n".join(lines)


def write_report(results: Path, rows: Dict[str, Dict], meta: Dict) -> str:
    """results.json and results.md (the perplexity table) under ``results``; returns the text."""
    (results / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = "\n\n".join(filter(None, [
        f"# Multi30k English language modeling ({meta['profile']} profile, {meta['device']})",
        meta.get("notes", ""),
        markdown_table(rows),
        f"Perplexity: `fairseq-eval-lm` on test_2016_flickr ({meta['test_sentences']:,} "
        "captions), per sentencepiece token including end-of-sentence, one caption per sample; "
        f"vocabulary {meta['vocab']:,} symbols, d={meta['dim']}. Wall time of the run that wrote "
        f"this: {meta['wall_seconds']:.0f}s on {meta['device']} (stages found done are not "
        "re-run).",
        f"Command: `{meta.get('command', '')}`",
    ]))
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text
