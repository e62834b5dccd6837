"""The language-model recipe's WikiText-2 profile, CI-sized (the first 300 lines of each split of
../shared's WikiText-2, or a generated WikiText-style corpus): word level through
fairseq-preprocess, the teacher, an 8x student, the adaptive-input row at the student's embedding
bytes and three post-training rows (the teacher's E, the student's f(U), adaptive input's bands),
each scored by fairseq-eval-lm with a context window; then the teacher packed and shipped."""

import gzip
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers import run_recipe

from examples import adaptive_size
from examples.language_model import run as lm_recipe
from examples.language_model import shipped_teacher
from fairseq_distilled_emb.checkpoints import load_checkpoint

CODE_SHAPE_BYTES = 24  # the quantized kind's (3,) int64 buffer


def unique_params(state, prefixes):
    """Parameters of the tensors under ``prefixes``, each storage counted once (tied ones);
    fairseq's one-element ``_float_tensor`` and ``version`` buffers are not parameters."""
    seen = {}
    for key, tensor in state.items():
        if key.startswith(prefixes) and not key.endswith(("._float_tensor", ".version")):
            seen[tensor.untyped_storage().data_ptr()] = tensor.numel()
    return sum(seen.values())


def test_wikitext2_ci_profile_runs_every_kind_of_row(wikitext_dir, tmp_path, capsys):
    results = tmp_path / "results"
    command = [sys.executable, "-m", "examples.language_model.run", "--profile", "wikitext2-ci",
               "--device", "cpu", "--results", str(results), "--data-dir", str(wikitext_dir)]
    finished = run_recipe(command, timeout=600)
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-3000:]
    saved = json.loads((results / "results.json").read_text())
    rows = saved["rows"]
    assert list(rows) == ["teacher", "distilled_8x", "adaptive_8x", "teacher_int4",
                          "distilled_8x_ptq_int8", "adaptive_8x_ptq_int8"]

    # word level: the 996 most frequent training words (+4 specials), no subword pieces
    with gzip.open(wikitext_dir / "wiki.train.tokens.gz", "rt", encoding="utf-8") as handle:
        train_words = {word for line in handle.read().split("\n")[:300] for word in line.split()}
    words = [line.split()[0] for line in (results / "data-bin" / "dict.txt").open()]
    assert len(words) == 996 and set(words) <= train_words
    # every test token is scored once: the words of the first 300 lines plus one </s> a line
    test_lines = (results / "data" / "test.raw.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(test_lines) == 300
    scored = sum(len(line.split()) + 1 for line in test_lines)
    for name, row in rows.items():
        log = (results / "logs" / f"{name}.eval-lm.log").read_text()
        loss, perplexity = re.findall(r"Loss \(base 2\): ([\d.]+), Perplexity: ([\d.]+)", log)[-1]
        assert (row["loss_base2"], row["perplexity"]) == (float(loss), float(perplexity))
        assert row["eval_tokens"] == scored

    vocab, dim, rank = 1000, 64, 7  # rank of the 8x student: floor(V·d/8 / (V+d))
    assert rows["distilled_8x"]["embedding_params"] == rank * (vocab + dim)
    # the adaptive-input row: the student's embedding bytes within 5 %, counted as fairseq built it
    adaptive = rows["adaptive_8x"]
    assert abs(adaptive["embedding_params"] / rows["distilled_8x"]["embedding_params"] - 1) < 0.05
    state = load_checkpoint(results / "rows" / "adaptive_8x" / "checkpoint_best.pt")["model"]
    assert adaptive["embedding_params"] == unique_params(
        state, ("decoder.embed_tokens.", "decoder.adaptive_softmax."))
    cutoffs, factor = adaptive_size.matching_adaptive_cutoffs(vocab, dim, rank * (vocab + dim))
    assert (cutoffs, factor) == ([21, 63], 8)
    assert state["decoder.embed_tokens.embeddings.2.0.weight"].shape == (vocab - 63, dim // 64)

    # post-training rows: the stored bytes of the int codes (+fp16 scale and offset per row)
    assert rows["teacher_int4"]["embedding_bytes"] == vocab * (dim // 2 + 4) + CODE_SHAPE_BYTES
    assert rows["distilled_8x_ptq_int8"]["embedding_bytes"] == (
        vocab * (rank + 4) + rank * dim * 4 + CODE_SHAPE_BYTES)
    # adaptive input's bands (21/42/937 words, widths 64/8/1) in int8 codes, the float
    # projections (width → d) and the head's two cluster vectors
    assert rows["adaptive_8x_ptq_int8"]["embedding_bytes"] == (
        21 * (64 + 4) + 42 * (8 + 4) + 937 * (1 + 4) + 3 * CODE_SHAPE_BYTES
        + 4 * (dim * (64 + 8 + 1) + 2 * dim))
    assert rows["teacher_int4"]["updates"] == 0
    table = (results / "results.md").read_text()
    assert "| total params | test ppl | × teacher ppl |" in table  # not scored on valid here
    fewer = 256000 / rows["teacher_int4"]["embedding_bytes"]
    assert ("| teacher_int4 | the teacher's E in int4 codes, post-training (no training) | "
            f"64,000 | {fewer:.2f} |") in table

    check_shipped_teacher(results, command, tmp_path, capsys)


def check_shipped_teacher(results, command, tmp_path, capsys):
    """The finished teacher packed (examples/language_model/shipped_teacher.py) and installed in a
    new results directory instead of training one; a corrupted file, another dictionary or another
    teacher already in place is refused before anything runs."""
    shipped = tmp_path / "shipped"
    # what python -m examples.language_model.shipped_teacher RESULTS DIR runs
    shipped_teacher.pack(results, shipped)
    assert sorted(path.name for path in tmp_path.iterdir() if "shipped" in path.name) == [
        "shipped"]  # the .partial directory was renamed
    sums = (shipped / "SHA256SUMS").read_text().splitlines()
    assert [line.split()[1] for line in sums] == ["teacher_fp16.pt", "dict.txt", "train.json"]
    assert (shipped / "dict.txt").read_bytes() == (results / "data-bin" / "dict.txt").read_bytes()

    other = tmp_path / "with-shipped"
    installed = run_recipe(command[:-4] + ["--results", str(other), "--data-dir", command[-1],
                                           "--shipped-teacher", str(shipped), "--rows",
                                           "teacher_int4"], timeout=300)
    assert installed.returncode == 0, (installed.stdout + installed.stderr)[-3000:]
    assert not (other / "logs" / "teacher.train.log").exists()  # nothing trained it
    assert (other / "teacher" / "checkpoint_best.pt").read_bytes() == (
        shipped / "teacher_fp16.pt").read_bytes()
    rows = json.loads((other / "results.json").read_text())["rows"]
    first = json.loads((results / "results.json").read_text())["rows"]
    assert rows["teacher"]["updates"] == first["teacher"]["updates"]  # the shipped run's summary
    # the fp16 teacher and its int4 E score as the fp32 ones, to fp16 rounding
    for name in ("teacher", "teacher_int4"):
        assert abs(rows[name]["loss_base2"] - first[name]["loss_base2"]) < 2e-3, name

    # refusals (in-process: the run above went through them): a data-bin binarized with another
    # dictionary, another teacher in the results directory, an existing pack directory
    data_bin = tmp_path / "other-vocab" / "data-bin"
    shutil.copytree(results / "data-bin", data_bin)
    with open(data_bin / "dict.txt", "a", encoding="utf-8") as handle:
        handle.write("unseen 1\n")
    with pytest.raises(SystemExit) as refused:
        shipped_teacher.check_dictionary(shipped, data_bin)
    assert str(refused.value) == (
        f"error: {data_bin / 'dict.txt'} differs from the shipped teacher's "
        f"{shipped / 'dict.txt'} (another corpus or --vocab-size): pass another --results, or "
        "--train-teacher to train a teacher on this data")
    with pytest.raises(SystemExit) as refused:
        shipped_teacher.install(shipped, results / "data-bin", results / "teacher")
    assert str(refused.value) == (
        f"error: {results / 'teacher' / 'checkpoint_best.pt'} is another teacher than the shipped "
        f"{shipped / 'teacher_fp16.pt'}: pass another --results, or move that checkpoint "
        "away to install the shipped one here")
    with pytest.raises(SystemExit) as refused:
        shipped_teacher.pack(results, shipped)
    assert str(refused.value) == (
        f"error: {shipped} exists: pass a new directory (nothing is replaced)")
    with pytest.raises(SystemExit) as refused:
        shipped_teacher.pack(tmp_path / "other-vocab", tmp_path / "never")
    assert str(refused.value) == (
        f"error: {tmp_path / 'other-vocab' / 'teacher'} has no finished training (train.json): "
        "finish the teacher stage first")
    assert not (tmp_path / "never").exists()

    # a corrupted shipped file: the recipe stops before it reads or writes anything
    (shipped / "train.json").write_text("{}")
    with pytest.raises(SystemExit) as corrupted:
        lm_recipe.main(command[3:-4] + ["--results", str(tmp_path / "none"), "--data-dir",
                                        command[-1], "--shipped-teacher", str(shipped)])
    found = hashlib.sha256(b"{}").hexdigest()
    expected = next(line.split()[0] for line in sums if line.endswith("train.json"))
    assert str(corrupted.value) == (
        f"error: {shipped / 'train.json'}: SHA-256 {found} differs from the recorded {expected}; "
        "restore the file (git checkout) or pass --train-teacher")
    assert not (tmp_path / "none").exists()
    # a vocabulary of its own for the shipped teacher's dictionary: argparse's one error line
    with pytest.raises(SystemExit):
        lm_recipe.main(command[3:-4] + ["--results", str(tmp_path / "none"), "--data-dir",
                                        command[-1], "--shipped-teacher", str(shipped),
                                        "--vocab-size", "500"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{Path(sys.argv[0]).name}: error: --vocab-size: the shipped teacher ({shipped}) brings "
        "its own dictionary; add --train-teacher to train one on another vocabulary")
    assert not (tmp_path / "none").exists()


def test_the_committed_wikitext2_cpu_teacher_is_the_profiles_and_intact():
    """The teacher the wikitext2-cpu profile installs instead of training one (~5 hours of 2
    cores): its checksums hold, its summary is the run its README describes, and it loads with
    torch's weights-only unpickler as a tied 33,280 x 256 transformer_lm_gpt."""
    shipped = lm_recipe.PROFILES["wikitext2-cpu"].shipped_teacher
    assert shipped == Path(lm_recipe.__file__).resolve().parent / "wikitext2_cpu_teacher"
    shipped_teacher.verify(shipped)
    summary = json.loads((shipped / "train.json").read_text())
    assert (summary["updates"], summary["best_valid_loss"]) == (2816, 7.07)
    assert summary["settings"]["--patience"] == "3"
    state = load_checkpoint(shipped / "teacher_fp16.pt")
    embed = state["model"]["decoder.embed_tokens.weight"]
    assert (tuple(embed.shape), str(embed.dtype)) == ((33280, 256), "torch.float16")
    assert state["cfg"]["model"]["share_decoder_input_output_embed"] is True
