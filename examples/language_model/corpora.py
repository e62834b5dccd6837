"""The language-model recipe's two corpora, from raw text to a fairseq ``--only-source`` data-bin,
and how each is cut into samples.

- ``multi30k``: the English captions, sentencepiece (train side only), one caption per sample.
- ``wikitext2``: WikiText-2 v1 as published (``wiki.{train,valid,test}.tokens.gz``), word level
  and closed-vocabulary, so no subwords: ``fairseq-preprocess --only-source`` on the token files
  themselves, one ``</s>`` per line (blank lines included), as the data README counts tokens. The
  text is one stream cut into fixed blocks (``--sample-break-mode none``); evaluation scores every
  token once, each with ``context_window`` tokens of earlier context (fairseq-eval-lm
  ``--context-window``), as the benchmark is usually reported.
"""

import gzip
from pathlib import Path
from typing import List, Optional

from examples.multi30k import run as recipe

WIKITEXT_FILES = {"train": "wiki.train.tokens.gz", "valid": "wiki.valid.tokens.gz",
                  "test": "wiki.test.tokens.gz"}
DEFAULT_DATA = {"multi30k": recipe.REPO.parent / "shared" / "data" / "multi30k",
                "wikitext2": recipe.REPO.parent / "shared" / "data" / "wikitext-2"}
TEST_NAMES = {"multi30k": "test_2016_flickr", "wikitext2": "wiki.test.tokens"}


def read_split(corpus: str, data_dir: Path, split: str, limit: Optional[int]) -> List[str]:
    """The first ``limit`` lines (all if None) of one split's raw text."""
    if corpus == "wikitext2":
        path = data_dir / WIKITEXT_FILES[split]
        wanted = "wiki.train.tokens.gz, wiki.valid.tokens.gz and wiki.test.tokens.gz"
    else:
        path = data_dir / f"{recipe.SPLITS[split]}.en.gz"
        wanted = "the raw Multi30k task-1 files (train.en.gz, val.en.gz, test_2016_flickr.en.gz)"
    if not path.exists():
        raise SystemExit(f"error: {path} not found: pass --data-dir with {wanted}; this script "
                         "downloads nothing")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":  # the file's final newline ends the last line
        lines.pop()
    return lines[:limit] if limit else lines


def prepare(args, profile, results: Path, srcdict: Optional[Path] = None) -> Path:
    """Raw text → (sentencepiece for Multi30k) → fairseq-preprocess --only-source (with
    ``srcdict``, a shipped teacher's dictionary, instead of a new one)."""
    data_bin = results / "data-bin"
    if (data_bin / "preprocess.done").exists():
        return data_bin
    work = results / "data"
    work.mkdir(parents=True, exist_ok=True)
    for split in recipe.SPLITS:
        lines = read_split(profile.corpus, args.data_dir, split, profile.max_sentences)
        (work / f"{split}.raw.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = args.vocab_size or profile.vocab_size
    if profile.corpus == "wikitext2":  # already tokenized words: the raw files are the input
        suffix, limit = "raw", (["--nwordssrc", str(vocab)] if vocab else [])
    else:
        recipe.sentencepiece_encode(work, ["en"], vocab)
        suffix, limit = "spm", []
    recipe.binarize(results, data_bin, [
        "--only-source", "--trainpref", f"{work}/train.{suffix}.en",
        "--validpref", f"{work}/valid.{suffix}.en", "--testpref", f"{work}/test.{suffix}.en",
        *(["--srcdict", str(srcdict)] if srcdict else limit)])
    return data_bin


def sample_flags(profile) -> List[str]:
    """How training and evaluation cut the text: a caption, or a block of the running text."""
    mode = "none" if profile.corpus == "wikitext2" else "eos"
    return ["--sample-break-mode", mode, "--tokens-per-sample", str(profile.tokens_per_sample)]


def eval_flags(profile) -> List[str]:
    """fairseq-eval-lm's: the training cut, plus earlier context for each block of running text,
    normalized ``softmax_batch`` positions at a time (a student's decoder leaves its logits to
    that step: DistilledLanguageModelDecoder)."""
    flags = sample_flags(profile) + ["--softmax-batch", str(profile.softmax_batch)]
    if profile.corpus == "wikitext2" and profile.context_window:
        return flags + ["--context-window", str(profile.context_window)]
    return flags
