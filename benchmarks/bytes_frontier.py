#!/usr/bin/env python
"""BLEU against the embedding's stored bytes: post-training quantization of the teacher's E, the
students' factors in fp32 and in integer codes (post-training, and quantization-aware rows as
trained), and the same-size dense rows, on one finished Multi30k results directory.

Every point is a real file written by ``fairseq-distilled-emb export`` (``--fp16`` body, and
``--embedding-bits B`` where the point has codes) and decoded by stock ``fairseq-generate``, on
valid (where choices are made) and on test (reported once). Bytes are the embedding's tensors as
stored (codes, scales, offsets and W included), counted by ``stats``, and the whole file's size.

    python -m benchmarks.bytes_frontier --results results/multi30k-demo --profile demo

A finished point (its ``point.json``) is skipped on a re-run. The table (``bytes.md``), the JSON
and the plot (``bytes_frontier.png``) are written to ``<results>/bytes``.
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

from benchmarks.common import load_recipe
from examples.multi30k.commands import log_like_fairseq_cli
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.cli.stats import embedding_summary, model_config

TEACHER_BITS = (8, 4, 3, 2)
FACTOR_BITS = (8, 4)


def points(results: Path, teacher_bits, factor_bits) -> List[Dict]:
    """What to export: the teacher (fp16 E, then codes), each student row (fp32 factors; codes
    post-training, or the codes it was trained with), each stock row (fp16 E, then codes)."""
    teacher = results / "teacher" / "checkpoint_best.pt"
    found = [{"name": "teacher_fp16", "source": teacher, "bits": None, "method": "teacher"}]
    found += [{"name": f"teacher_int{b}", "source": teacher, "bits": b,
               "method": "teacher, post-training codes"} for b in teacher_bits]
    for row_dir in sorted((results / "rows").glob("*")):
        checkpoint = row_dir / "checkpoint_best.pt"
        if not (row_dir / "train.json").exists():  # not finished (the recipe writes it last)
            continue
        cfg = model_config(load_checkpoint(checkpoint))
        if not str(cfg.get("arch", "")).startswith("distilled_"):
            # a stock row (the same-size dense model, the teacher trained on): fp16 and, like
            # the teacher, post-training codes of its E
            method = ("teacher continued" if row_dir.name == "teacher_continued"
                      else "dense, same total params")
            found.append({"name": row_dir.name, "source": checkpoint, "bits": None,
                          "method": method})
            found += [{"name": f"{row_dir.name}_int{b}", "source": checkpoint, "bits": b,
                       "method": f"{method}, post-training codes"} for b in teacher_bits]
            continue
        trained_bits = cfg.get("embedding_bits")
        if trained_bits:
            found.append({"name": f"{row_dir.name}_qat", "source": checkpoint,
                          "bits": trained_bits, "method": "student, quantization-aware codes"})
            continue
        found.append({"name": f"{row_dir.name}_fp32_factors", "source": checkpoint, "bits": None,
                      "method": "student, fp32 factors"})
        if cfg.get("embedding_factorization", "low-rank") in ("low-rank", "dense-head"):
            found += [{"name": f"{row_dir.name}_ptq_int{b}", "source": checkpoint, "bits": b,
                       "method": "student, post-training codes"} for b in factor_bits]
    return found


def with_variant(found: List[Dict], names, suffix: str, setting: Dict, what: str) -> List[Dict]:
    """``found`` plus, for each code point named in ``names``, the same export with ``setting``
    (as NAME_``suffix``): ``--int8-body`` (the whole file in integer codes, the deployment beside
    CTranslate2's int8), ``--embedding-scale-format log8`` (1-byte row scales),
    ``--embedding-w-fp16`` or ``--embedding-tail-bits T --embedding-head-rows K``."""
    extra = [{**point, **setting, "name": f"{point['name']}_{suffix}",
              "method": f"{point['method']}, {what}"}
             for point in found if point["name"] in names and point["bits"]]
    return found + extra


def measure(point: Dict, recipe, args, profile, results: Path, subsets=("valid", "test")) -> Dict:
    """Export, count the bytes, decode ``subsets`` (each stage skipped when done; a point
    measured on test alone, as ``make demo`` does, gets its valid decode on a later run)."""
    out_dir = results / "bytes" / point["name"]
    done = out_dir / "point.json"
    if done.exists():
        measured = json.loads(done.read_text())
        if all(f"{subset}_bleu" in measured for subset in subsets):
            return measured
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = out_dir / "exported.pt"
    if not exported.exists():
        bits = ["--embedding-bits", str(point["bits"])] if point["bits"] else []
        bits += ["--int8-body"] if point.get("int8_body") else []
        if point.get("scale_format"):
            bits += ["--embedding-scale-format", point["scale_format"]]
        bits += ["--embedding-w-fp16"] if point.get("w_fp16") else []
        if point.get("tail_bits"):
            bits += ["--embedding-tail-bits", str(point["tail_bits"]),
                     "--embedding-head-rows", str(point["head_rows"])]
        recipe.run([sys.executable, "-m", "fairseq_distilled_emb", "export", "--fp16", *bits,
                    str(point["source"]), str(exported)],
                   results / "logs" / f"bytes.{point['name']}.export.log")
    state = load_checkpoint(exported)
    summary = embedding_summary(state["model"], model_config(state))
    data_bin = results / "data-bin"
    scores = {subset: recipe.evaluate(data_bin, exported, out_dir, results, args, profile,
                                      f"bytes.{point['name']}", subset=subset)
              for subset in subsets}
    payload = {**{k: v for k, v in point.items() if k != "source"},
               "source": str(point["source"]), "embedding_bytes": summary["embedding_bytes"],
               "tensor_bytes": summary["tensor_bytes"], "file_bytes": exported.stat().st_size,
               **{f"{subset}_bleu": scores[subset]["bleu"] for subset in subsets},
               "test_sentences_per_second": scores["test"]["sentences_per_second"]}
    recipe.write_json(done, payload)
    return payload


def teacher_fp32_embedding_bytes(results: Path) -> int:
    """The teacher's E in fp32: every point's "× fewer" is against it, so that a narrower dense
    row is counted at the bytes it saves against the teacher, not against its own smaller E."""
    state = load_checkpoint(results / "teacher" / "checkpoint_best.pt")
    return embedding_summary(state["model"], model_config(state))["fp32_embedding_bytes"]


def cell(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(rows: List[Dict]) -> str:
    teacher = next((r for r in rows if r["name"] == "teacher_fp16"), None)
    lines = ["| point | what | embedding bytes | × fewer than fp32 E | file MB | valid BLEU | "
             "test BLEU | Δ teacher (test) |", "|" + "---|" * 8]
    for r in sorted(rows, key=lambda r: r["embedding_bytes"], reverse=True):
        delta = "" if teacher is None else f"{r['test_bleu'] - teacher['test_bleu']:+.2f}"
        lines.append(f"| {r['name']} | {r['method']} | {r['embedding_bytes']:,} | "
                     f"{r['fewer_than_fp32']:.1f} | {r['file_bytes'] / 1e6:.2f} | "
                     f"{cell(r.get('valid_bleu'))} | {r['test_bleu']:.2f} | {delta} |")
    return "\n".join(lines)


#: byte budgets (× fewer embedding bytes than fp32 E, at least) the choice table answers for,
#: after those of the teacher's own int8 and int4 codes (the issue's 25x / 50x / 90x targets)
BUDGETS = (25, 50, 90)


def budget_choices(rows: List[Dict], budgets=None) -> str:
    """For each budget (at least ``b``× fewer embedding bytes than fp32 E; by default the int8
    and int4 teacher's own, then :data:`BUDGETS`), the point a user would pick: the best *valid*
    BLEU among the points that fit, with its test BLEU reported, and beside it the best point a
    user gets without the student, chosen the same way: the teacher's E in codes (no training),
    the teacher trained on for the students' updates and the same-size dense model, each with
    its E in codes (equal training, the fair "train on, then quantize" alternative)."""
    teacher = next((r for r in rows if r["name"] == "teacher_fp16"), None)
    if budgets is None:
        budgets = [r["fewer_than_fp32"] for r in rows if r["name"] in ("teacher_int8",
                                                                       "teacher_int4")]
        budgets = sorted(budgets) + list(BUDGETS)
    lines = ["| budget (× fewer) | chosen on valid | × fewer | valid BLEU | test BLEU | "
             "Δ teacher (test) | best point without the student | its test BLEU |",
             "|" + "---|" * 8]
    for budget in budgets:
        fits = [r for r in rows if r["fewer_than_fp32"] >= budget and r.get("valid_bleu") is not None]
        if not fits:
            continue
        best = _chosen_on_valid(fits)
        baseline = _chosen_on_valid([r for r in fits if not r["method"].startswith("student")])
        delta = "" if teacher is None else f"{best['test_bleu'] - teacher['test_bleu']:+.2f}"
        lines.append(
            f"| ≥ {budget:g} | {best['name']} | {best['fewer_than_fp32']:.1f} | "
            f"{best['valid_bleu']:.2f} | {best['test_bleu']:.2f} | {delta} | "
            f"{baseline['name'] if baseline else 'none fits'} | "
            f"{cell(baseline['test_bleu'] if baseline else None)} |")
    return "\n".join(lines)


def _chosen_on_valid(points: List[Dict]) -> Optional[Dict]:
    """The best valid BLEU of ``points`` (None if empty); a tie goes to the smaller point."""
    return max(points, key=lambda r: (r["valid_bleu"], r["fewer_than_fp32"]), default=None)


def plot(rows: List[Dict], path: Path) -> Optional[Path]:
    """Test BLEU against embedding bytes (log) and against the whole file's MB, one colour per
    method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, panels = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    methods = sorted({r["method"] for r in rows})
    for method in methods:
        chosen = [r for r in rows if r["method"] == method]
        for panel, key, scale in ((panels[0], "embedding_bytes", 1), (panels[1], "file_bytes", 1e6)):
            panel.scatter([r[key] / scale for r in chosen], [r["test_bleu"] for r in chosen],
                          label=method)
            for r in chosen:
                panel.annotate(r["name"], (r[key] / scale, r["test_bleu"]), fontsize=6)
    panels[0].set_xscale("log")
    panels[0].set_xlabel("embedding bytes as stored (log)")
    panels[1].set_xlabel("exported file MB")
    panels[0].set_ylabel("test BLEU")
    panels[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True,
                        help="a finished examples.multi30k.run results directory")
    parser.add_argument("--profile", default="demo", help="the profile it was run with")
    parser.add_argument("--teacher-bits", type=int, nargs="*", default=list(TEACHER_BITS),
                        help="the teacher's E (and every stock row's) exported in these code "
                        "widths")
    parser.add_argument("--factor-bits", type=int, nargs="*", default=list(FACTOR_BITS),
                        help="the students' f(U) exported in these code widths")
    parser.add_argument("--points", nargs="*",
                        help="only these points (e.g. teacher_int4 distilled_8x_int4)")
    parser.add_argument("--int8-body", nargs="*", default=[],
                        help="also export these code points with --int8-body (as NAME_int8body)")
    parser.add_argument("--log8-scales", nargs="*", default=[],
                        help="also export these code points with 1-byte row scales, "
                             "--embedding-scale-format log8 (as NAME_log8)")
    parser.add_argument("--w-fp16", nargs="*", default=[],
                        help="also export these code points with W in fp16, --embedding-w-fp16 "
                             "(as NAME_w16)")
    parser.add_argument("--tail-bits", nargs="*", default=[], metavar="NAME:T:K",
                        help="also export code point NAME with the rows from K on in T-bit codes, "
                             "--embedding-tail-bits T --embedding-head-rows K (as NAME_hKtT)")
    parser.add_argument("--subsets", nargs="+", default=["valid", "test"],
                        choices=["valid", "test"], help="what to decode (test is always one)")
    args = parser.parse_args(argv)
    log_like_fairseq_cli()
    if "test" not in args.subsets:
        parser.error("--subsets must include test (the table reports it)")
    for spec in args.tail_bits:
        if not re.fullmatch(r"[\w.]+:\d:\d+", spec):
            parser.error(f"--tail-bits {spec}: expected NAME:T:K (e.g. "
                         "distilled_16x_ptq_int4_log8_w16:3:5650)")
    recipe = load_recipe("multi30k")
    args.use_gpu, args.max_tokens, args.student_updates = False, None, None
    args.source_lang, args.target_lang = recipe.language_pair(args.results)
    profile = recipe.with_overrides(recipe.PROFILES[args.profile], args)
    found = points(args.results, args.teacher_bits, args.factor_bits)
    found = with_variant(found, args.log8_scales, "log8", {"scale_format": "log8"},
                         "1-byte log scales")
    found = with_variant(found, args.w_fp16, "w16", {"w_fp16": True}, "fp16 W")
    for spec in args.tail_bits:
        name, tail, head = spec.split(":")
        found = with_variant(found, [name], f"h{head}t{tail}",
                             {"tail_bits": int(tail), "head_rows": int(head)},
                             f"rows from {head} in int{tail}")
    found = with_variant(found, args.int8_body, "int8body", {"int8_body": True}, "int8 body")
    chosen = [point for point in found if not args.points or point["name"] in args.points]
    rows = [measure(point, recipe, args, profile, args.results, args.subsets) for point in chosen]
    reference = teacher_fp32_embedding_bytes(args.results)
    rows = [{**row, "fewer_than_fp32": round(reference / row["embedding_bytes"], 1)}
            for row in rows]
    out = args.results / "bytes"
    recipe.write_json(out / "bytes.json", rows)
    # the budget table chooses on valid: without valid scores (--subsets test) there is none
    report = table(rows) + ("\n\nBy budget (chosen on valid):\n\n" + budget_choices(rows)
                            if "valid" in args.subsets else "")
    (out / "bytes.md").write_text(report + "\n")
    plot(rows, out / "bytes_frontier.png")
    print(report)


if __name__ == "__main__":
    main()
