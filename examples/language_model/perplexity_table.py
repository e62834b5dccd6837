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
    ("embedding_fewer", "emb. bytes × fewer"),
    ("total_params", "total params"),
    ("valid_perplexity", "valid ppl"),
    ("perplexity", "test ppl"),
    ("ppl_vs_teacher", "× teacher ppl"),
    ("reconstruction_error", "recon. rel. err"),
    ("updates", "updates"),
    ("train_seconds", "train s"),
    ("eval_tokens_per_second", "eval tok/s"),
    ("checkpoint_bytes", "ckpt MB"),
)


def versus_teacher(rows: Dict[str, Dict], teacher_embedding_bytes: int) -> Dict[str, Dict]:
    """Each row with its embedding bytes relative to the teacher's fp32 E (from its shape: a run
    of from-scratch rows alone has no teacher row) and its perplexity relative to the teacher's
    row, where there is one."""
    teacher = rows.get("teacher", {})
    compared = {}
    for name, row in rows.items():
        row = dict(row)
        if row.get("embedding_bytes"):
            row["embedding_fewer"] = round(teacher_embedding_bytes / row["embedding_bytes"], 2)
        if teacher.get("perplexity") and row.get("perplexity"):
            row["ppl_vs_teacher"] = round(row["perplexity"] / teacher["perplexity"], 3)
        compared[name] = row
    return compared


def markdown_table(rows: Dict[str, Dict], teacher_embedding_bytes: int) -> str:
    """The perplexity table (cells formatted as benchmarks/report.py formats the BLEU table); the
    valid column only where rows were scored on valid (the WikiText-2 profiles)."""
    columns = [(key, title) for key, title in COLUMNS if key != "valid_perplexity"
               or any(row.get(key) is not None for row in rows.values())]
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for name, row in versus_teacher(rows, teacher_embedding_bytes).items():
        values = {**row, "row": name}
        lines.append("| " + " | ".join(report.cell(key, values.get(key)) for key, _ in columns)
                     + " |")
    return "\n".join(lines)


def write_report(results: Path, rows: Dict[str, Dict], meta: Dict) -> str:
    """results.json and results.md (the perplexity table) under ``results``; returns the text."""
    (results / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    wikitext = meta.get("corpus") == "wikitext2"
    counted = (f"on wiki.test.tokens ({meta['test_sentences']:,} lines), per word including one "
               f"end-of-line per line, `{meta.get('sample_flags', '')}`" if wikitext else
               f"on test_2016_flickr ({meta['test_sentences']:,} captions), per sentencepiece "
               "token including end-of-sentence, one caption per sample")
    text = "\n\n".join(filter(None, [
        f"# {'WikiText-2' if wikitext else 'Multi30k English'} language modeling "
        f"({meta['profile']} profile, {meta['device']})",
        meta.get("notes", ""),
        markdown_table(rows, 4 * meta['vocab'] * meta['dim']),
        f"Perplexity: `fairseq-eval-lm` {counted}; vocabulary {meta['vocab']:,} symbols, "
        f"d={meta['dim']}. Embedding bytes as stored (fp32, or the int codes with their fp16 "
        "scales and W for the post-training rows) against the teacher's fp32 E. "
        "Wall time of the run that wrote "
        f"this: {meta['wall_seconds']:.0f}s on {meta['device']} (stages found done are not "
        "re-run).",
        f"Command: `{meta.get('command', '')}`",
    ]))
    (results / "results.md").write_text(text + "\n", encoding="utf-8")
    return text
