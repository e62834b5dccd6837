"""Session fixtures shared by the whole suite: a real parallel corpus, its sentencepiece
encoding, a ``fairseq-preprocess``ed data-bin, and tiny checkpoints trained through the real
``fairseq-train``.

Dependency chain (each built once per session, in a pytest tmp dir)::

    multi30k_corpus -> spm_corpus -> data_bin -> tiny_student_checkpoint  (distilled_..._tiny)
                                              -> tiny_dense_checkpoint    (stock transformer_tiny)
                                              -> tiny_teacher             (stock, 150 updates)

The corpus is the first 1,500 training / 200 validation / 200 test sentences of Multi30k De–En from
``../shared/data/multi30k`` when that folder exists. A user's clone has no ``../shared``: the
suite then generates a small, learnable toy De–En corpus instead and says so in the pytest header
(and with a warning). Set ``DISTILLED_EMB_TEST_CORPUS=generated`` to force the generated corpus.

Plain helpers (``run_fairseq``, ``PLUGIN_DIR``, log parsers) are in ``tests/helpers.py``; they are
also offered as fixtures here for tests that prefer fixtures.
"""

import os

# Before torch starts its OpenMP pool in this process (see helpers.fairseq_env for why).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402
import gzip  # noqa: E402
import pickle  # noqa: E402
import random  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest
from filelock import FileLock

import helpers
from helpers import (
    PLUGIN_DIR,
    SHARED_MULTI30K,
    SHARED_WIKITEXT2,
    combined_output,
    preprocess_english,
    run_fairseq,
)

SOURCE_LANG, TARGET_LANG = "de", "en"
SPLITS = ("train", "valid", "test")
#: lines read from each Multi30k split (or generated)
SPLIT_SIZES = {"train": 1500, "valid": 200, "test": 200}
MULTI30K_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
SPM_VOCAB_SIZE = 1000
TINY_STUDENT_MAX_UPDATE = 40


def use_shared_multi30k() -> bool:
    if os.environ.get("DISTILLED_EMB_TEST_CORPUS", "").lower() == "generated":
        return False
    return all(
        (SHARED_MULTI30K / f"{name}.{lang}.gz").exists()
        for name in MULTI30K_FILES.values()
        for lang in (SOURCE_LANG, TARGET_LANG)
    )


def pytest_configure(config):
    # fairseq 0.12 under torch 2.13: deprecation noise from fairseq's own modules, not the plugin
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script` is deprecated")
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning:fairseq")


def pytest_report_header(config):
    if use_shared_multi30k():
        sizes = ", ".join(f"{split} {n:,}" for split, n in SPLIT_SIZES.items())
        return f"test corpus: Multi30k De-En from {SHARED_MULTI30K} (first lines: {sizes})"
    return "test corpus: ../shared absent: using a generated corpus (toy De-En grammar)"


def build_once(tmp_path_factory, name: str, build):
    """The value of a session fixture, built by one process of the run.

    Under pytest-xdist (``make test`` runs ``-n 2``) each worker runs the session fixtures; the
    first worker to need one builds it and pickles its value (paths and dataclasses) beside the
    workers' temporary folders, the others wait on its lock and reuse it: pytest-xdist's own recipe
    for fixtures that should run once. Without xdist it just builds.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build()
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / f"{name}.lock")):
        stored = shared / f"{name}.pickle"
        if stored.exists():
            return pickle.loads(stored.read_bytes())
        value = build()
        stored.write_bytes(pickle.dumps(value))
        return value


def session_fixture_built_once(function):
    """``@pytest.fixture(scope="session")`` whose value :func:`build_once` shares among workers
    (``function`` takes ``tmp_path_factory``)."""

    @functools.wraps(function)
    def fixture(*args, **kwargs):
        return build_once(kwargs["tmp_path_factory"], function.__name__,
                          lambda: function(*args, **kwargs))

    return pytest.fixture(scope="session")(fixture)


# ----------------------------------------------------------------------------- corpus


@dataclass
class ParallelCorpus:
    """Parallel text files ``<dir>/<split>.<lang>`` for splits train/valid/test.

    ``prefix(split)`` is what fairseq-preprocess's ``--trainpref``/``--validpref``/``--testpref``
    expect; ``lines(split, lang)`` reads a side back.
    """

    dir: Path
    source_lang: str = SOURCE_LANG
    target_lang: str = TARGET_LANG
    generated: bool = False
    sizes: Dict[str, int] = field(default_factory=dict)

    def path(self, split: str, lang: str) -> Path:
        return self.dir / f"{split}.{lang}"

    def prefix(self, split: str) -> str:
        return str(self.dir / split)

    def lines(self, split: str, lang: str) -> List[str]:
        return self.path(split, lang).read_text(encoding="utf-8").splitlines()


def _read_gz_head(path: Path, n: int) -> List[str]:
    lines = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if len(lines) == n:
                break
            lines.append(line.rstrip("\n"))
    return lines


# A toy De-En grammar: word-for-word (phrase-for-phrase) pairs in a fixed order, so that even a
# 40-update model learns something. German inflection is ignored on purpose.
_NOUNS = [("Mann", "man"), ("Frau", "woman"), ("Hund", "dog"), ("Kind", "child"),
          ("Junge", "boy"), ("Mädchen", "girl"), ("Katze", "cat"), ("Pferd", "horse"),
          ("Vogel", "bird"), ("Radfahrer", "cyclist"), ("Koch", "cook"), ("Musiker", "musician")]
_ADJECTIVES = [("kleiner", "small"), ("großer", "big"), ("junger", "young"), ("alter", "old"),
               ("roter", "red"), ("weißer", "white"), ("schwarzer", "black"),
               ("glücklicher", "happy"), ("müder", "tired")]
_VERBS = [("läuft", "runs"), ("sitzt", "sits"), ("steht", "stands"), ("spielt", "plays"),
          ("schläft", "sleeps"), ("springt", "jumps"), ("wartet", "waits"), ("lacht", "laughs"),
          ("singt", "sings"), ("isst", "eats")]
_PREPOSITIONS = [("auf", "on"), ("neben", "next to"), ("vor", "in front of"),
                 ("hinter", "behind"), ("unter", "under"), ("in", "in")]
_PLACES = [("der Straße", "the street"), ("dem Gras", "the grass"), ("dem Strand", "the beach"),
           ("einem Haus", "a house"), ("dem Wasser", "the water"), ("einer Bank", "a bench"),
           ("dem Park", "the park"), ("einem Baum", "a tree"), ("dem Schnee", "the snow")]


def generate_toy_pair(rng: random.Random):
    """One (German, English) sentence pair of the toy grammar."""

    def noun_phrase():
        noun = rng.choice(_NOUNS)
        if rng.random() < 0.6:
            adjective = rng.choice(_ADJECTIVES)
            return f"ein {adjective[0]} {noun[0]}", f"a {adjective[1]} {noun[1]}"
        return f"ein {noun[0]}", f"a {noun[1]}"

    de, en = noun_phrase()
    verb = rng.choice(_VERBS)
    de, en = f"{de} {verb[0]}", f"{en} {verb[1]}"
    if rng.random() < 0.8:
        prep, place = rng.choice(_PREPOSITIONS), rng.choice(_PLACES)
        de, en = f"{de} {prep[0]} {place[0]}", f"{en} {prep[1]} {place[1]}"
    if rng.random() < 0.3:
        other_de, other_en = noun_phrase()
        verb = rng.choice(_VERBS)
        de, en = f"{de} und {other_de} {verb[0]}", f"{en} and {other_en} {verb[1]}"
    return de[0].upper() + de[1:] + ".", en[0].upper() + en[1:] + "."


def generate_toy_corpus(sizes: Dict[str, int], seed: int = 0) -> Dict[str, List[tuple]]:
    """Deterministic toy corpus: ``{split: [(de, en), ...]}``."""
    rng = random.Random(seed)
    return {split: [generate_toy_pair(rng) for _ in range(n)] for split, n in sizes.items()}


@session_fixture_built_once
def multi30k_corpus(tmp_path_factory) -> ParallelCorpus:
    """Raw (untokenized) De–En text: Multi30k heads from ../shared, or a generated toy corpus."""
    out = tmp_path_factory.mktemp("raw")
    if use_shared_multi30k():
        for split, name in MULTI30K_FILES.items():
            for lang in (SOURCE_LANG, TARGET_LANG):
                lines = _read_gz_head(SHARED_MULTI30K / f"{name}.{lang}.gz", SPLIT_SIZES[split])
                (out / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ParallelCorpus(out, generated=False, sizes=dict(SPLIT_SIZES))

    warnings.warn("../shared absent: using a generated corpus (toy De-En grammar)")
    print("../shared absent: using a generated corpus")
    for split, pairs in generate_toy_corpus(SPLIT_SIZES).items():
        for index, lang in enumerate((SOURCE_LANG, TARGET_LANG)):
            text = "\n".join(pair[index] for pair in pairs) + "\n"
            (out / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return ParallelCorpus(out, generated=True, sizes=dict(SPLIT_SIZES))


WIKITEXT_SPLITS = {"train": 1200, "valid": 320, "test": 320}  # generated lines of each split
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "bi", "do", "fu", "ga", "he"]


def generate_wikitext_style(lines: int, rng: random.Random) -> List[str]:
    """WikiText's layout: `` = Title = `` headings between blank lines and tokenized paragraphs
    (`` . `` and `` , `` split off, ``@-@`` joins, a few ``<unk>``) of 5,000 pseudo-words drawn
    with Zipf frequencies, so that the ci profile's 1,000-word vocabulary fills as on the real
    text."""
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) + str(index)
             for index in range(5000)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    out = []
    while len(out) < lines:
        out += ["", f" = {rng.choice(words).capitalize()} = ", ""]
        paragraph = []
        for _ in range(rng.randint(5, 10)):
            sentence = rng.choices(words, weights, k=rng.randint(8, 20))
            for token in ("<unk>", "@-@", ","):
                if rng.random() < 0.3:
                    sentence.insert(rng.randrange(1, len(sentence)), token)
            paragraph += sentence + ["."]
        out.append(" " + " ".join(paragraph) + " ")
    return out[:lines]


@pytest.fixture(scope="session")
def wikitext_dir(tmp_path_factory) -> Path:
    """WikiText-2 as published (``wiki.<split>.tokens.gz``): ../shared's copy when it is there
    (the ci profile reads its first lines), else a generated WikiText-style corpus."""
    files = {split: f"wiki.{split}.tokens.gz" for split in WIKITEXT_SPLITS}
    generated = os.environ.get("DISTILLED_EMB_TEST_CORPUS", "").lower() == "generated"
    if not generated and all((SHARED_WIKITEXT2 / name).exists() for name in files.values()):
        return SHARED_WIKITEXT2
    out = tmp_path_factory.mktemp("wikitext-2")
    rng = random.Random(0)
    for split, name in files.items():
        with gzip.open(out / name, "wt", encoding="utf-8") as handle:
            handle.write("\n".join(generate_wikitext_style(WIKITEXT_SPLITS[split], rng)) + "\n")
    return out


@dataclass
class SpmCorpus(ParallelCorpus):
    """The corpus encoded into sentencepiece pieces joined by spaces, plus the model that did it."""

    model: Path = None
    raw: ParallelCorpus = None

    def encode(self, lines: List[str]) -> List[str]:
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(self.model))
        return [" ".join(pieces) for pieces in processor.encode(lines, out_type=str)]


@session_fixture_built_once
def spm_corpus(multi30k_corpus, tmp_path_factory) -> SpmCorpus:
    """A joint unigram sentencepiece model (vocab 1000, no bos/eos) trained on the train side only,
    and every split encoded with it."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm")
    joint = out / "joint_train.txt"
    train = [
        line for lang in (SOURCE_LANG, TARGET_LANG) for line in multi30k_corpus.lines("train", lang)
    ]
    joint.write_text("\n".join(train) + "\n", encoding="utf-8")
    prefix = out / "spm"
    with open(out / "spm_train.log", "w") as log:
        spm.SentencePieceTrainer.train(
            input=str(joint),
            model_prefix=str(prefix),
            vocab_size=SPM_VOCAB_SIZE,
            hard_vocab_limit=False,  # the generated corpus has fewer distinct pieces
            model_type="unigram",
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            input_sentence_size=4000,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=100000,
            num_threads=2,
            logstream=log,
        )
    corpus = SpmCorpus(
        out / "encoded",
        generated=multi30k_corpus.generated,
        sizes=dict(multi30k_corpus.sizes),
        model=Path(f"{prefix}.model"),
        raw=multi30k_corpus,
    )
    corpus.dir.mkdir()
    for split in SPLITS:
        for lang in (SOURCE_LANG, TARGET_LANG):
            encoded = corpus.encode(multi30k_corpus.lines(split, lang))
            corpus.path(split, lang).write_text("\n".join(encoded) + "\n", encoding="utf-8")
    return corpus


@session_fixture_built_once
def data_bin(spm_corpus, tmp_path_factory) -> Path:
    """``fairseq-preprocess`` (the real CLI) output: joined De–En dictionary, binarized splits."""
    destdir = tmp_path_factory.mktemp("data-bin")
    run_fairseq(
        "preprocess",
        "--source-lang", SOURCE_LANG, "--target-lang", TARGET_LANG, "--joined-dictionary",
        "--trainpref", spm_corpus.prefix("train"),
        "--validpref", spm_corpus.prefix("valid"),
        "--testpref", spm_corpus.prefix("test"),
        "--destdir", destdir, "--workers", "1",
        timeout=300,
    )
    return destdir


@session_fixture_built_once
def lm_data_bin(spm_corpus, tmp_path_factory) -> Path:
    """``fairseq-preprocess --only-source`` of the English side: a language model's data-bin."""
    return preprocess_english(spm_corpus, tmp_path_factory.mktemp("lm-data-bin"))


# ----------------------------------------------------------------------------- trained checkpoints


@dataclass
class TrainRun:
    """A finished ``fairseq-train`` run: its save dir and output (fairseq logs to stdout)."""

    save_dir: Path
    stdout: str
    stderr: str

    @property
    def log(self) -> str:
        return self.stdout + self.stderr

    @property
    def best(self) -> Path:
        return self.save_dir / "checkpoint_best.pt"

    @property
    def last(self) -> Path:
        return self.save_dir / "checkpoint_last.pt"


def tiny_student_train_args(data_bin, save_dir, max_update: int = TINY_STUDENT_MAX_UPDATE):
    """The ``fairseq-train`` arguments of the ``tiny_student_checkpoint`` fixture."""
    return [
        data_bin, "--user-dir", PLUGIN_DIR,
        "--arch", "distilled_transformer_tiny", "--share-all-embeddings",
        "--embedding-compression", "4",
        "--task", "translation",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--lr", "5e-3",
        "--max-tokens", "2000", "--max-update", str(max_update),
        "--log-format", "simple", "--log-interval", "5",
        "--cpu", "--seed", "1", "--num-workers", "0",
        "--no-epoch-checkpoints", "--save-dir", save_dir,
    ]


@session_fixture_built_once
def tiny_student_checkpoint(data_bin, tmp_path_factory) -> TrainRun:
    """A ``distilled_transformer_tiny`` (shared factorized embedding, compression 4) trained for 40
    updates through the real ``fairseq-train --user-dir fairseq_distilled_emb``."""
    save_dir = tmp_path_factory.mktemp("tiny-student")
    result = run_fairseq("train", *tiny_student_train_args(data_bin, save_dir), timeout=600)
    run = TrainRun(save_dir, result.stdout, result.stderr)
    assert run.best.exists(), f"no checkpoint_best.pt in {save_dir}:\n{run.log[-3000:]}"
    return run


@session_fixture_built_once
def tiny_dense_checkpoint(data_bin, tmp_path_factory) -> TrainRun:
    """A stock dense ``transformer_tiny`` (shared embeddings), 10 updates, trained WITHOUT the
    plugin (no ``--user-dir``): a teacher-shaped checkpoint, and the reference run of the test
    that the plugin has no side effects on stock training. Arguments: :func:`helpers.dense_transformer_tiny_train_args`."""
    save_dir = tmp_path_factory.mktemp("tiny-dense")
    result = run_fairseq(
        "train", *helpers.dense_transformer_tiny_train_args(data_bin, save_dir), timeout=600
    )
    run = TrainRun(save_dir, result.stdout, result.stderr)
    assert run.best.exists(), f"no checkpoint_best.pt in {save_dir}:\n{run.log[-3000:]}"
    return run


TINY_TEACHER_MAX_UPDATE = 150


@session_fixture_built_once
def tiny_teacher(data_bin, tmp_path_factory) -> TrainRun:
    """A stock dense ``transformer_tiny`` teacher (shared embeddings) trained for 150 updates
    WITHOUT the plugin, so its embedding is a real trained one: the teacher of the
    reconstruction-init and distillation tests."""
    save_dir = tmp_path_factory.mktemp("tiny-teacher")
    result = run_fairseq(
        "train",
        *helpers.dense_transformer_tiny_train_args(
            data_bin, save_dir, max_update=TINY_TEACHER_MAX_UPDATE
        ),
        "--log-interval", "25",
        timeout=600,
    )
    run = TrainRun(save_dir, result.stdout, result.stderr)
    assert run.best.exists(), f"no checkpoint_best.pt in {save_dir}:\n{run.log[-3000:]}"
    return run


@session_fixture_built_once
def tiny_distilled_student(data_bin, tiny_teacher, tmp_path_factory) -> TrainRun:
    """The full method through the CLI: ``translation_reconstruction_init`` from ``tiny_teacher``
    + ``label_smoothed_cross_entropy_with_distillation``, compression 4, 20 updates."""
    save_dir = tmp_path_factory.mktemp("tiny-distilled-student")
    result = run_fairseq(
        "train", data_bin, "--user-dir", PLUGIN_DIR,
        "--task", "translation_reconstruction_init", "--teacher-path", tiny_teacher.best,
        "--arch", "distilled_transformer_tiny", "--share-all-embeddings",
        "--embedding-compression", "4",
        "--criterion", "label_smoothed_cross_entropy_with_distillation", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000", "--max-update", "20",
        "--log-format", "simple", "--log-interval", "5", "--cpu", "--seed", "1",
        "--num-workers", "0", "--no-epoch-checkpoints", "--save-dir", save_dir,
        timeout=600,
    )
    run = TrainRun(save_dir, result.stdout, result.stderr)
    assert run.best.exists(), f"no checkpoint_best.pt in {save_dir}:\n{run.log[-3000:]}"
    return run


# ----------------------------------------------------------------------------- helpers as fixtures


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """``fairseq_distilled_emb/`` of this checkout: the value of ``--user-dir``."""
    return PLUGIN_DIR


@pytest.fixture(scope="session", name="run_fairseq")
def run_fairseq_fixture():
    """:func:`helpers.run_fairseq`: ``run_fairseq("train", *args, check=True, input=None)``."""
    return run_fairseq


__all__ = ["ParallelCorpus", "SpmCorpus", "TrainRun", "combined_output"]
