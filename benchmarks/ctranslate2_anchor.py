#!/usr/bin/env python
"""The deployment anchor: a Multi30k teacher converted by CTranslate2's fairseq converter (int8 and
float32), decoded by CTranslate2 on the same test sentences, scored by the recipe's sacreBLEU,
with its model file's bytes and its sentences/s (beam 5, the cores this process is given).

``pip install ctranslate2`` (4.x) first: it is a benchmark extra, never a plugin requirement.

    python -m benchmarks.ctranslate2_anchor --results results/multi30k-demo

``--rows teacher_continued`` converts finished stock rows too (the teacher trained on for the
students' updates: what a user who trains on and deploys with CTranslate2 gets).

The converter reads ``checkpoint["args"]`` (an argparse Namespace), which ``export``ed and
recent fairseq checkpoints do not have; the teacher is read with the plugin's safe loader and
re-saved with its model config as that Namespace in ``<results>/ctranslate2/`` first.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import sacrebleu
import torch
from fairseq.data.data_utils import post_process

from examples.multi30k.commands import log_like_fairseq_cli
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.cli.export import to_plain


def converter_input(checkpoint: Path, out: Path) -> Path:
    """``checkpoint`` with ``args`` = its model config as a Namespace (what the converter reads;
    a dataclass model such as transformer_lm names its architecture ``_name``, not ``arch``)."""
    state = load_checkpoint(checkpoint)
    cfg = to_plain(state["cfg"]) if state.get("cfg") is not None else None
    args = state.get("args") or argparse.Namespace(**{**cfg["task"], **cfg["model"]})
    if getattr(args, "arch", None) is None:
        args.arch, args.task = cfg["model"]["_name"], cfg["task"]["_name"]
    path = out / f"{checkpoint.stem}_for_converter.pt"
    torch.save({"args": args, "model": state["model"]}, path)
    return path


def convert(source: Path, data_bin: Path, output: Path, quantization: str) -> Path:
    from ctranslate2.converters.fairseq import FairseqConverter

    if not (output / "model.bin").exists():
        FairseqConverter(str(source), str(data_bin)).convert(str(output), quantization=quantization,
                                                            force=True)
    return output / "model.bin"


def translate(model_dir: Path, sources, beam: int = 5, threads: int = 2, batch_size: int = 128):
    """CTranslate2's hypotheses (pieces) of ``sources`` and the seconds ``translate_batch`` took."""
    import ctranslate2

    translator = ctranslate2.Translator(str(model_dir), device="cpu", intra_threads=threads)
    started = time.perf_counter()
    results = translator.translate_batch([line.split() for line in sources], beam_size=beam,
                                         max_batch_size=batch_size, max_decoding_length=200)
    seconds = time.perf_counter() - started
    return [" ".join(result.hypotheses[0]) for result in results], seconds


def score(model: Path, results: Path, source_lang: str, target_lang: str) -> dict:
    """A converted model's file bytes, and its sacreBLEU and sentences/s on valid and test."""
    row = {"file_bytes": model.stat().st_size}
    for subset in ("valid", "test"):
        data = results / "data"
        sources = (data / f"{subset}.spm.{source_lang}").read_text().splitlines()
        references = (data / f"{subset}.raw.{target_lang}").read_text().splitlines()
        pieces, seconds = translate(model.parent, sources)
        # what fairseq-generate --remove-bpe sentencepiece does to its hypotheses
        hypotheses = [post_process(line, "sentencepiece") for line in pieces]
        bleu = sacrebleu.corpus_bleu(hypotheses, [references])
        row[f"{subset}_bleu"] = round(bleu.score, 2)
        row[f"{subset}_sentences_per_second"] = round(len(sources) / seconds, 1)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True,
                        help="a finished examples.multi30k.run results directory")
    parser.add_argument("--source-lang", default="de", help="the pair's source language")
    parser.add_argument("--target-lang", default="en", help="the pair's target language")
    parser.add_argument("--rows", nargs="*", default=[],
                        help="also convert these finished stock rows (<results>/rows/NAME), e.g. "
                             "teacher_continued")
    args = parser.parse_args(argv)
    log_like_fairseq_cli()
    out = args.results / "ctranslate2"
    out.mkdir(parents=True, exist_ok=True)
    models = {"teacher": args.results / "teacher" / "checkpoint_best.pt"}
    models.update({row: args.results / "rows" / row / "checkpoint_best.pt" for row in args.rows})
    for name, checkpoint in models.items():
        if not checkpoint.exists():
            parser.error(f"--rows {name}: {checkpoint} does not exist (finish the row first)")
    rows = {}
    for name, checkpoint in models.items():
        (out / name).mkdir(exist_ok=True)
        source = converter_input(checkpoint, out / name)
        for quantization in ("int8", "float32"):
            model = convert(source, args.results / "data-bin", out / f"{name}_{quantization}",
                            quantization)
            row = score(model, args.results, args.source_lang, args.target_lang)
            rows[f"ctranslate2_{name}_{quantization}"] = row
            print(f"ctranslate2 {name} {quantization}: {row}", flush=True)
    (out / "anchor.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
