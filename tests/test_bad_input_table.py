"""Every row of the "Bad input" table (docs/bad-input.md, linked from the README), run through the
real command.

Each case runs the stock ``fairseq-train`` console script, or ``fairseq-distilled-emb``'s entry
point in-process (``helpers.run_distilled_emb``: its output and exit code as the process reports
them, without a 5 s interpreter start; a hostile pickle still gets a process of its own), on a
real bad input and asserts three things: the last line printed is exactly the expected
``error:`` line (and the only line that says "error", with no traceback); the table row's
message, read as a pattern (``…`` = anything, ``X``/``N``/``M`` = a path or number), matches that
line, so the table cannot drift from the code; and nothing the user had was written or changed
(the save directory holds only the user's own file, every input file keeps its bytes, no export
output appears).
"""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import PLUGIN_DIR, REPO_ROOT, combined_output, console_script, fairseq_env
from helpers import dictionary_size, run_distilled_emb, student_train_args

DIM, TEACHER_LAYERS = 64, 2  # transformer_tiny, the shape of the tiny_teacher fixture


TABLE = REPO_ROOT / "docs" / "bad-input.md"


def documented_table():
    """``{input cell: [message patterns]}`` of the "Bad input" table in ``docs/bad-input.md``."""
    text = TABLE.read_text(encoding="utf-8")
    rows = {}
    for line in (line for line in text.splitlines() if line.startswith("|")):
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) == 2 and cells[0] not in ("input", "---|---"):
            rows[cells[0]] = re.findall(r"`([^`]+)`", cells[1].split(" (nothing runs")[0])
    return rows


def as_pattern(documented: str) -> re.Pattern:
    """A documented message as a regex over the error line's message: ``…`` is any text, ``X`` a
    path, ``N``/``M`` a number; a message documented without its tool starts after ``error: ``."""
    pattern = re.escape(documented).replace("…", ".*")
    pattern = re.sub(r"\bX\b", r"\\S+", pattern)
    pattern = re.sub(r"\b[NM]\b", r"\\d+", pattern)
    if not documented.startswith(("fairseq-distilled-emb", "…")):
        pattern = r".*?: error: " + pattern
    return re.compile(pattern)


def digest(*paths):
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


class Case:
    """A bad input's workspace: inputs under ``in/``, the user's save directory ``save/`` (holding
    one file of theirs), export outputs under ``out/``. Every command run through it records
    whether the inputs, the teacher and the data kept their bytes."""

    def __init__(self, data_bin, teacher, tmp_path):
        self.data_bin, self.teacher, self.tmp = data_bin, teacher, tmp_path
        self.inputs, self.save_dir, self.out = tmp_path / "in", tmp_path / "save", tmp_path / "out"
        for folder in (self.inputs, self.save_dir, self.out):
            folder.mkdir()
        (self.save_dir / "keep.txt").write_text("a user's file")
        self.unchanged = []

    def snapshot(self):
        files = [self.teacher, *sorted(Path(self.data_bin).iterdir()), *sorted(
            p for p in self.inputs.rglob("*") if p.is_file())]
        return digest(*files)

    def watched(self, run):
        """``run()``, recording whether the inputs kept their bytes."""
        before = self.snapshot()
        result = run()
        self.unchanged.append(self.snapshot() == before)
        return result

    def process(self, command):
        return self.watched(lambda: subprocess.run(command, capture_output=True, text=True,
                                                   env=fairseq_env()))

    def train(self, *extra, teacher=None, base=None):
        """fairseq-train of the tiny 4x student (``base`` replaces the student's flags)."""
        teacher = self.teacher if teacher is None else teacher
        args = base or student_train_args(self.data_bin, teacher, self.save_dir, 1)
        return self.process([str(console_script("train")), *map(str, args), *map(str, extra)])

    def train_plain(self, *flags):
        """fairseq-train of a student with stock --task translation (no teacher involved)."""
        return self.train(base=[
            self.data_bin, "--user-dir", PLUGIN_DIR, "--arch", "distilled_transformer_tiny",
            "--task", "translation", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2000",
            "--max-update", "1", "--cpu", "--save-dir", self.save_dir, *flags])

    def cli(self, *args):
        """``fairseq-distilled-emb``, in-process (the console script's ``main``)."""
        return self.watched(lambda: run_distilled_emb(*args))

    def cli_process(self, *args):
        """``fairseq-distilled-emb`` in a process of its own (``python -m``, the same ``main``)."""
        return self.process([sys.executable, "-m", "fairseq_distilled_emb", *map(str, args)])

    def file(self, name, content=b"user data"):
        path = self.inputs / name
        path.write_bytes(content)
        return path

    def checkpoint(self, name, state):
        path = self.inputs / name
        torch.save(state, path)
        return path

    def teacher_variant(self, name, edit):
        """A copy of the teacher with ``edit(state)`` applied (the user's teacher is untouched)."""
        state = torch.load(self.teacher, weights_only=False)
        edit(state)
        return self.checkpoint(name, state)


TRAIN = "fairseq-train: error: "
EXPORT, STATS = "fairseq-distilled-emb export: error: ", "fairseq-distilled-emb stats: error: "
NOT_FAIRSEQ = ("is not a fairseq checkpoint (it needs a 'model' dict of tensors and a 'cfg' or "
               "'args' configuration); pass a checkpoint written by fairseq-train")
COPIES = "(the student copies the teacher's weights)"


def torch_reason(path):
    """What torch's safe loader says about ``path`` (the message quotes it in parentheses)."""
    try:
        torch.load(path, weights_only=True)
    except Exception as error:  # the same catch as checkpoints.load_checkpoint
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    raise AssertionError(f"{path} loaded")


def unreadable(label, path):
    return (f"{label} is not a readable fairseq checkpoint ({torch_reason(path)}); pass a "
            "checkpoint written by fairseq-train")


def truncated_vocabulary(state):
    for key in list(state["model"]):
        if key.endswith(("embed_tokens.weight", "output_projection.weight")):
            state["model"][key] = state["model"][key][:-8].clone()


def rank_64(c):
    vocab = dictionary_size(c.data_bin)
    largest = (vocab * DIM - 1) // (vocab + DIM)
    return c.train_plain("--share-all-embeddings", "--embedding-rank", "64"), TRAIN + (
        f"--embedding-rank 64 would not compress an embedding of V={vocab}, d={DIM}: r·(V+d) = "
        f"{64 * (vocab + DIM):,} >= V·d = {vocab * DIM:,} (rank must be < the embedding dimension "
        f"{DIM}; the largest rank that compresses is {largest})")


def corrupt_teacher(c):
    path = c.file("garbage.pt", b"this is not a checkpoint\n" * 10)
    return c.train(teacher=path), TRAIN + unreadable(f"--teacher-path {path}", path)


def non_fairseq_teacher(c):
    path = c.checkpoint("weights.pt", {"weights": torch.zeros(3)})
    return c.train(teacher=path), TRAIN + f"--teacher-path {path} {NOT_FAIRSEQ}"


def other_dictionary_size(c):
    path = c.teacher_variant("small-vocab.pt", truncated_vocabulary)
    vocab = dictionary_size(c.data_bin)
    return c.train(teacher=path), TRAIN + (
        f"--teacher-path {path} has a {vocab - 8}-symbol dictionary but the data ({c.data_bin}) "
        f"has {vocab}: binarize the student's data with the teacher's dictionary "
        "(fairseq-preprocess --srcdict/--tgtdict) or use the matching teacher")


def other_symbols(c):
    """The teacher's recorded data directory holds dictionaries with two symbols swapped."""
    teacher_data = c.inputs / "teacher-data"
    teacher_data.mkdir()
    for lang in ("de", "en"):
        lines = (c.data_bin / f"dict.{lang}.txt").read_text().splitlines()
        lines[0], lines[1] = lines[1], lines[0]
        (teacher_data / f"dict.{lang}.txt").write_text("\n".join(lines) + "\n")

    def point_at_teacher_data(state):
        state["cfg"]["task"]["data"] = str(teacher_data)

    path = c.teacher_variant("other-symbols.pt", point_at_teacher_data)
    dictionary = teacher_data / "dict.de.txt"
    return c.train(teacher=path), TRAIN + (
        f"--teacher-path {path}: its dictionary {dictionary} differs from this data's dict.de.txt "
        f"(same size, different symbols): binarize with fairseq-preprocess --srcdict/--tgtdict "
        f"{dictionary}")


def mismatch(flag, field, teacher_value, student_value, *value):
    def case(c):
        return c.train(flag, *value), TRAIN + (
            f"--teacher-path {c.teacher} was trained with {field}={teacher_value} but the student "
            f"has {flag} {student_value}: set {flag} to match the teacher {COPIES}")
    return case


def unshared_student(c):
    base = [a for a in student_train_args(c.data_bin, c.teacher, c.save_dir, 1)
            if a != "--share-all-embeddings"]
    return c.train("--share-decoder-input-output-embed", base=base), TRAIN + (
        f"--teacher-path {c.teacher} was trained with share_all_embeddings=True but the student "
        f"has --share-all-embeddings False: set --share-all-embeddings to match the teacher {COPIES}")


class RunsCode:
    """Unpickling this calls os.system: what a hostile 'checkpoint' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_file(c):
    """The teacher, ``stats`` and ``export`` refuse a pickle that runs code, and it never runs
    (each in a process of its own: were safe loading broken, it must not run in pytest's)."""
    marker = c.tmp / "payload-ran"
    path = c.checkpoint("hostile.pt", {"model": {"x": RunsCode(marker)}, "cfg": {}, "args": None})
    refusal = (f"{path} is not a readable fairseq checkpoint: it needs posix.system, which safe "
               "loading (weights_only) refuses; do not turn safe loading off for a file you did "
               "not make: pass a checkpoint written by fairseq-train")
    runs = [(c.train(teacher=path), TRAIN + "--teacher-path " + refusal),
            (c.cli_process("stats", path), STATS + refusal),
            (c.cli_process("export", path, c.out / "out.pt"), EXPORT + refusal)]
    assert not marker.exists(), "the payload ran"
    return runs


def corrupt_to_stats_and_export(c):
    path = c.file("garbage.pt", b"this is not a checkpoint\n" * 10)
    return [(c.cli("stats", path), STATS + unreadable(str(path), path)),
            (c.cli("export", path, c.out / "out.pt"), EXPORT + unreadable(str(path), path))]


def export_onto_a_file(c):
    target = c.file("model.pt")
    return c.cli("export", c.teacher, target), (
        EXPORT + f"{target} exists: choose another output or pass --force")


def export_to_a_directory_or_under_a_file(c):
    directory, blocker = c.inputs / "a-directory", c.file("a-file")
    directory.mkdir()
    return [(c.cli("export", c.teacher, directory, "--force"),
             EXPORT + f"{directory} is a directory: give the output file's path"),
            (c.cli("export", c.teacher, blocker / "out.pt", "--force"),
             EXPORT + f"cannot write {blocker / 'out.pt'}: {blocker} is a file, not a folder")]


def structurally_invalid(c):
    damages = {"model-not-a-dict": lambda s: s.update(model=list(s["model"].values())),
               "cfg-a-string": lambda s: s.update(cfg="not a config", args=None),
               "model-holds-a-string": lambda s: s["model"].update(x="not a tensor")}
    runs = []
    for name, damage in damages.items():
        path = c.teacher_variant(f"{name}.pt", damage)
        for command in ("stats", "export") if name == "model-not-a-dict" else ("stats",):
            runs.append((c.cli(command, path, *([c.out / "out.pt"] if command == "export" else [])),
                         f"fairseq-distilled-emb {command}: error: {path} {NOT_FAIRSEQ}"))
    return runs


def quantized_twice(c):
    quantized = c.inputs / "int8.pt"
    made = run_distilled_emb("export", "--embedding-bits", "8", c.teacher, quantized)
    assert made.returncode == 0, made.stderr[-2000:]
    return c.cli("export", "--embedding-bits", "4", quantized, c.out / "out.pt"), (
        EXPORT + "--embedding-bits: this checkpoint's embedding is already quantized (int8 codes)"
        "; quantize the training checkpoint it was exported from instead")


BITS_CHOICES = "is not supported: choose one of 2, 3, 4, 5, 6, 7, 8"

CASES = {  # the table's input cell -> the case
    "`--embedding-rank 64` with d = 64": rank_64,
    "`--embedding-rank 0`": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-rank", "0"),
        TRAIN + "--embedding-rank 0 must be a positive integer"),
    "`--embedding-factorization dense-head` without `--embedding-dense-rows`": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-factorization", "dense-head",
                      "--embedding-compression", "4"),
        TRAIN + "--embedding-factorization dense-head needs --embedding-dense-rows K (how many of "
        "the most frequent words keep dense rows, e.g. 2000)"),
    "`--embedding-dense-rows` without `--embedding-factorization dense-head`": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-dense-rows", "20",
                      "--embedding-compression", "4"),
        TRAIN + "--embedding-dense-rows needs --embedding-factorization dense-head (low-rank "
        "factorizes every row): add it, or drop --embedding-dense-rows"),
    "`--embedding-dense-rows` holding the whole budget": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-factorization", "dense-head",
                      "--embedding-dense-rows", "300", "--embedding-compression", "4"),
        TRAIN + f"--embedding-dense-rows 300 alone holds {300 * DIM:,} parameters, more than 1/4 "
        f"of V·d = {dictionary_size(c.data_bin) * DIM:,}: lower --embedding-dense-rows or "
        "--embedding-compression"),
    "both `--embedding-rank` and `--embedding-compression`": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-rank", "8",
                      "--embedding-compression", "4"),
        TRAIN + "--embedding-rank and --embedding-compression are mutually exclusive; give only one"),
    "neither": lambda c: (
        c.train_plain("--share-all-embeddings"),
        TRAIN + "a distilled_transformer* architecture needs --embedding-rank R or "
        "--embedding-compression X (e.g. --embedding-compression 8)"),
    "no `--teacher-path`": lambda c: (
        c.train(teacher=""),
        TRAIN + "--task translation_reconstruction_init needs --teacher-path: the trained teacher "
        "checkpoint (e.g. checkpoints/teacher/checkpoint_best.pt) whose embedding is reconstructed"),
    "missing teacher file": lambda c: (
        c.train(teacher=c.inputs / "nope.pt"),
        TRAIN + f"--teacher-path {c.inputs / 'nope.pt'}: no such file; train the teacher first or "
        "fix the path"),
    "corrupt teacher": corrupt_teacher,
    "non-fairseq teacher": non_fairseq_teacher,
    "teacher with another dictionary size": other_dictionary_size,
    "same size, other symbols": other_symbols,
    "teacher (or `stats`/`export` file) whose pickle needs another global": hostile_file,
    "other dims/layers/heads": mismatch("--encoder-layers", "encoder_layers", TEACHER_LAYERS, 3,
                                        "3"),
    "pre-norm student, post-norm teacher (also activation, embedding scaling)": mismatch(
        "--encoder-normalize-before", "encoder_normalize_before", False, True),
    "unshared student vs share-all teacher": unshared_student,
    "dense `--arch` with the task": lambda c: (
        c.train(base=[a for a in student_train_args(c.data_bin, c.teacher, c.save_dir, 1)
                      if a not in ("--embedding-compression", "4")] + ["--arch", "transformer_tiny"]),
        TRAIN + "--task translation_reconstruction_init needs a student with a factorized "
        "embedding: use a distilled_transformer* (or distilled_transformer_lm*) --arch"),
    "distillation criterion without a teacher task": lambda c: (
        c.train_plain("--share-all-embeddings", "--embedding-compression", "4", "--criterion",
                      "label_smoothed_cross_entropy_with_distillation"),
        TRAIN + "--criterion label_smoothed_cross_entropy_with_distillation needs a teacher: use "
        "--task translation_reconstruction_init (or language_modeling_reconstruction_init) with "
        "--teacher-path TEACHER.pt, or set --embedding-distill-weight 0 --kd-alpha 0"),
    "corrupt checkpoint to `export`/`stats`": corrupt_to_stats_and_export,
    "`export` onto an existing file": export_onto_a_file,
    "`export` to a directory / under a path that is a file": export_to_a_directory_or_under_a_file,
    "a checkpoint whose `model` is not a dict of tensors, or whose `cfg` is not a config":
        structurally_invalid,
    "`--embedding-bits` outside 2–8, or with `--embedding-activation gelu`/`tanh` (training)":
        lambda c: [
            (c.train("--embedding-bits", "1"), TRAIN + f"--embedding-bits 1 {BITS_CHOICES}"),
            (c.train("--embedding-bits", "4", "--embedding-activation", "gelu"),
             TRAIN + "--embedding-bits needs --embedding-activation relu or linear (got gelu): "
             "the per-component rescaling that makes f(U) quantizable needs f(c·u) = c·f(u)")],
    "`--embedding-scale-format` without `--embedding-bits` (training, `export`)": lambda c: [
        (c.train("--embedding-scale-format", "log8"),
         TRAIN + "--embedding-scale-format log8 needs --embedding-bits (it is how the "
         "fake-quantized rows store their scales)"),
        (c.cli("export", "--embedding-scale-format", "log8", c.teacher, c.out / "out.pt"),
         EXPORT + "--embedding-scale-format log8 needs --embedding-bits B (it is how the codes' "
         "per-row scales are stored)")],
    "`export --embedding-bits` outside 2–8": lambda c: (
        c.cli("export", "--embedding-bits", "9", c.teacher, c.out / "out.pt"),
        EXPORT + f"--embedding-bits 9 {BITS_CHOICES}"),
    "`export --embedding-bits` with `--dense`": lambda c: (
        c.cli("export", "--embedding-bits", "4", "--dense", c.teacher, c.out / "out.pt"),
        EXPORT + "--embedding-bits and --dense exclude each other: --dense writes a stock float "
        "embedding; give one of them"),
    "`export --embedding-bits` of an already-quantized checkpoint": quantized_twice,
    "`export --int8-body` with `--dense`, or of a stock checkpoint without `--embedding-bits`":
        lambda c: [
            (c.cli("export", "--int8-body", "--dense", c.teacher, c.out / "out.pt"),
             EXPORT + "--int8-body and --dense exclude each other: --dense writes a stock float "
             "model; give one of them"),
            (c.cli("export", "--int8-body", c.teacher, c.out / "out.pt"),
             EXPORT + "--int8-body: 'transformer_tiny' is a stock architecture, which has no int8 "
             "layers; add --embedding-bits (a dense teacher's E then becomes codes too) or export "
             "a distilled_* student")],
    "`export --embedding-tail-bits`/`--embedding-head-rows`/`--embedding-w-fp16`: a split given "
    "halfway or not below `--embedding-bits`, or without codes": lambda c: [
        (c.cli("export", "--embedding-bits", "4", "--embedding-tail-bits", "3", c.teacher,
               c.out / "out.pt"),
         EXPORT + "--embedding-tail-bits and --embedding-head-rows go together: the first K rows "
         "keep --embedding-bits, the rest get the tail's width"),
        (c.cli("export", "--embedding-bits", "4", "--embedding-tail-bits", "4",
               "--embedding-head-rows", "10", c.teacher, c.out / "out.pt"),
         EXPORT + "--embedding-tail-bits 4 must be below --embedding-bits 4 (the tail holds the "
         "rarest words)"),
        (c.cli("export", "--embedding-w-fp16", c.teacher, c.out / "out.pt"),
         EXPORT + "--embedding-w-fp16 needs --embedding-bits B (W beside the codes)"),
        (c.cli("export", "--embedding-w-fp16", "--dense", c.teacher, c.out / "out.pt"),
         EXPORT + "--embedding-tail-bits/--embedding-w-fp16 set how integer codes are stored; "
         "--dense writes a stock float embedding: drop them")],
    "`export --project-in-out` of a translation model, or with `--dense`/`--embedding-bits`/"
    "`--int8-body`": lambda c: [
        (c.cli("export", "--project-in-out", c.teacher, c.out / "out.pt"),
         EXPORT + "--project-in-out: 'transformer_tiny' is not a distilled_transformer_lm* "
         "student; a translation encoder has no project-in (use --dense, or --embedding-bits)"),
        (c.cli("export", "--project-in-out", "--dense", c.teacher, c.out / "out.pt"),
         EXPORT + "--project-in-out writes a stock float model: it excludes --dense, "
         "--embedding-bits and --int8-body")],
}


def test_every_documented_row_has_a_case():
    assert sorted(documented_table()) == sorted(CASES)


@pytest.mark.parametrize("row", sorted(CASES))
def test_documented_row_through_the_real_command(row, data_bin, tiny_teacher, tmp_path):
    case = Case(data_bin, tiny_teacher.best, tmp_path)
    runs = CASES[row](case)
    documented = [as_pattern(message) for message in documented_table()[row]]
    for result, expected in runs if isinstance(runs, list) else [runs]:
        output = combined_output(result)
        exit_code = 2 if expected.startswith("fairseq-distilled-emb") else 1
        assert result.returncode == exit_code and "Traceback" not in output, output[-3000:]
        assert result.stderr.strip().splitlines()[-1] == expected, output[-3000:]
        assert [line for line in output.splitlines() if "error" in line.lower()] == [expected]
        assert any(pattern.fullmatch(expected) for pattern in documented), (
            f"{TABLE.name} row {row!r} documents {documented_table()[row]}, "
            f"the command says {expected!r}")
    assert all(case.unchanged), "an input file, the teacher or the data changed"
    assert [p.name for p in case.save_dir.iterdir()] == ["keep.txt"]
    assert (case.save_dir / "keep.txt").read_text() == "a user's file"
    assert list(case.out.iterdir()) == []
