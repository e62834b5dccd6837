"""Helpers shared by the test suite (importable as ``helpers`` from any test: pytest puts ``tests/``
on ``sys.path`` because ``tests/conftest.py`` lives there and ``tests/`` is not a package).

Everything here is plain functions and constants; the session fixtures built on them live in
``tests/conftest.py``.
"""

import contextlib
import gzip
import io
import logging
import os
import re
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from typing import Dict, List, Optional

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
#: what ``--user-dir`` gets in every CLI test
PLUGIN_DIR = REPO_ROOT / "fairseq_distilled_emb"
#: the read-only project data (absent in a user's clone: the fixtures then generate a corpus)
SHARED_MULTI30K = REPO_ROOT.parent / "shared" / "data" / "multi30k"
SHARED_WIKITEXT2 = REPO_ROOT.parent / "shared" / "data" / "wikitext-2"
#: the console scripts of the interpreter running the tests (fairseq-train, fairseq-generate, ...)
BIN_DIR = Path(sys.executable).parent

DEFAULT_TIMEOUT = 600


class FairseqCommandError(AssertionError):
    """A ``fairseq-*`` command exited non-zero (or timed out) when it was expected to succeed."""


def fairseq_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of every CLI run: 2 OpenMP threads, no CUDA, unbuffered output.

    ``OMP_WAIT_POLICY=PASSIVE`` keeps idle OpenMP threads from spin-waiting: on a 2-core machine
    shared with any other busy process, spinning threads made a 3 s training run take 100 s.
    It does not change results.
    """
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="2",
        OMP_WAIT_POLICY="PASSIVE",
        MKL_NUM_THREADS="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    if extra:
        env.update(extra)
    return env


def console_script(tool: str) -> Path:
    """The console script ``fairseq-<tool>`` (``tool`` may include the prefix) next to python."""
    name = tool if tool.startswith("fairseq-") else f"fairseq-{tool}"
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is fairseq installed in {sys.prefix}?")
    return path


def run_fairseq(
    tool: str,
    *args,
    check: bool = True,
    input: Optional[str] = None,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: Optional[os.PathLike] = None,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run the real console script ``fairseq-<tool>`` with ``args`` and capture its text output.

    ``--user-dir`` is NOT added: pass ``"--user-dir", PLUGIN_DIR`` where the plugin is wanted (so a
    test can also run stock fairseq). With ``check=True`` a non-zero exit raises
    :class:`FairseqCommandError` carrying the command and the last 3000 characters of the output.
    Note that fairseq logs to *stdout*; use :func:`combined_output` to search both streams.
    """
    command = [str(console_script(tool))] + [str(a) for a in args]
    try:
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=fairseq_env(env),
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise FairseqCommandError(
            f"timed out after {timeout}s: {' '.join(command)}\n{output[-3000:]}"
        ) from None
    if check and result.returncode != 0:
        raise FairseqCommandError(
            f"exit {result.returncode}: {' '.join(command)}\n{combined_output(result)[-3000:]}"
        )
    return result


def run_python(code: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a clean ``sys.modules``/torch state), capturing text."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=fairseq_env(),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"python -c exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}"
        )
    return result


def run_distilled_emb(*args) -> subprocess.CompletedProcess:
    """``fairseq-distilled-emb args`` run in this process, reported as the finished process.

    Starting a Python that imports torch and fairseq costs ~5 s a call; this calls the function
    the console script calls (``fairseq_distilled_emb.cli.__main__.main``) with stdout/stderr
    captured and with what the process would add to its stderr: log records (importing fairseq
    leaves the root logger one stderr handler, so ``main``'s ``basicConfig`` does nothing; here
    that handler writes to the captured stderr, pytest's come back after), warnings under Python's
    default filters, and an uncaught exception as a traceback and exit code 1. Only import-time
    output is missing. Keep a real subprocess where the process itself is under test: the console
    script, a hostile pickle, the environment, the umask.
    """
    from fairseq_distilled_emb.cli.__main__ import main

    argv = [str(a) for a in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = [logging.StreamHandler(stderr)]
    root.handlers[0].setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                warnings.catch_warnings():
            _python_default_warnings()
            try:
                returncode = main(argv)
            except SystemExit as stop:  # argparse: usage and error already on stderr
                returncode = 0 if stop.code is None else stop.code
                if not isinstance(returncode, int):  # sys.exit("message"), as Python does
                    print(returncode, file=sys.stderr)
                    returncode = 1
            except Exception:
                traceback.print_exc()
                returncode = 1
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return subprocess.CompletedProcess(
        [sys.executable, "-m", "fairseq_distilled_emb", *argv], returncode,
        stdout.getvalue(), stderr.getvalue())


def _python_default_warnings():
    """Inside ``catch_warnings``: the filters of a fresh ``python`` (not pytest's), shown on
    ``sys.stderr`` as the interpreter shows them (not recorded by pytest)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.simplefilter("ignore", category)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def combined_output(result: subprocess.CompletedProcess) -> str:
    return (result.stdout or "") + (result.stderr or "")


# ----------------------------------------------------------------------------- log parsing

_KEY_VALUE = re.compile(r"(\w+)=([^\s,]+)")


def parse_log_stats(log: str, tag: str = "train_inner") -> List[Dict[str, str]]:
    """The statistics of each ``--log-format simple`` line of logger ``tag``, in order.

    ``tag`` is ``train_inner`` (every --log-interval updates; ``key=value, ...``), ``train`` (end of
    epoch) or ``valid`` (``| key value |`` segments). Values stay strings so comparisons are exact;
    e.g. ``float(parse_log_stats(log)[-1]["loss"])``.
    """
    rows = []
    for line in log.splitlines():
        if f"| {tag} |" not in line:
            continue
        rest = line.split(f"| {tag} |", 1)[1]
        if "=" in rest:
            rows.append(dict(_KEY_VALUE.findall(rest)))
        else:
            segments = [segment.split() for segment in rest.split("|")]
            rows.append({s[0]: s[1] for s in segments if len(s) == 2})
    return rows


def hypotheses(output: str) -> Dict[int, str]:
    """``{sentence id: hypothesis text}`` from fairseq-generate/-interactive ``H-<id>`` lines."""
    found = {}
    for line in output.splitlines():
        if line.startswith("H-"):
            head, _score, *text = line.split("\t")
            found[int(head[2:])] = text[0] if text else ""
    return found


def dense_transformer_tiny_train_args(data_bin, save_dir, max_update: int = 10) -> List[str]:
    """Arguments for a stock dense ``transformer_tiny`` (shared embeddings), logging every update.

    Used by the ``tiny_dense_checkpoint`` fixture and by the test that the plugin's import leaves
    stock fairseq training bit-for-bit unchanged (same arguments plus ``--user-dir``).
    """
    return [
        data_bin,
        "--arch", "transformer_tiny", "--share-all-embeddings",
        "--task", "translation",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--optimizer", "adam", "--lr", "5e-3",
        "--max-tokens", "2000", "--max-update", str(max_update),
        "--log-format", "simple", "--log-interval", "1",
        "--cpu", "--seed", "1", "--num-workers", "0",
        "--no-epoch-checkpoints", "--save-dir", save_dir,
    ]


#: statistics that measure time or speed, not the computation: left out of exact comparisons
TIMING_KEYS = {"wps", "ups", "train_wall", "wall", "gb_free", "wpb_per_second"}


def without_timing(rows: List[Dict[str, str]]) -> List[Dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def build_model_from_flags(data_bin, *flags, arch: str = "distilled_transformer_tiny"):
    """``(args, task, model)`` built in-process exactly as ``fairseq-train`` would build them.

    Uses fairseq's own training parser (``options.parse_args_and_arch``) with ``--user-dir
    PLUGIN_DIR --task translation --cpu``; ``flags`` are further command-line flags such as
    ``"--share-all-embeddings", "--embedding-compression", "4"``.
    """
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        input_args=[
            str(data_bin), "--user-dir", str(PLUGIN_DIR), "--arch", arch,
            "--task", "translation", "--cpu", *[str(f) for f in flags],
        ],
    )
    task = tasks.setup_task(args)
    model = task.build_model(args)
    return args, task, model


def build_student_from_teacher(data_bin, teacher_path, save_dir, *flags,
                               arch: str = "distilled_transformer_tiny",
                               sharing=("--share-all-embeddings",), compression="4"):
    """``(args, task, model)`` of ``--task translation_reconstruction_init`` built in-process.

    By default the student shares all embeddings (as the teacher fixtures do) at compression 4
    (``sharing``/``compression`` change that) and uses ``--save-dir save_dir``
    (the task looks there for a checkpoint to resume from). ``flags`` add or override flags, e.g.
    ``"--embedding-init", "svd"`` or ``"--criterion", "label_smoothed_cross_entropy_with_distillation"``.
    """
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(
        parser,
        input_args=[
            str(data_bin), "--user-dir", str(PLUGIN_DIR), "--arch", arch,
            "--task", "translation_reconstruction_init", "--teacher-path", str(teacher_path),
            *sharing, *(["--embedding-compression", compression] if compression else []),
            "--cpu", "--save-dir", str(save_dir), *[str(f) for f in flags],
        ],
    )
    task = tasks.setup_task(args)
    model = task.build_model(args)
    return args, task, model


def dictionary_size(data_bin, name: str = "dict.de.txt") -> int:
    """Symbols of a fairseq dictionary file: 4 specials + one per line (the model's V)."""
    return 4 + sum(1 for _ in open(Path(data_bin) / name, encoding="utf-8"))


def first_batch(task, split: str = "valid", max_sentences: int = 16):
    """One real batch of ``split`` (loaded through the task, as fairseq-train would)."""
    task.load_dataset(split)
    iterator = task.get_batch_iterator(
        dataset=task.dataset(split), max_sentences=max_sentences, seed=1
    ).next_epoch_itr(shuffle=False)
    return next(iter(iterator))


def loaded_model_and_batch(path, max_sentences: int = 16):
    """``(model in eval mode, task, first valid batch)`` of a saved checkpoint, loaded as
    fairseq-generate loads it (the plugin imported, so its models are registered)."""
    from fairseq import checkpoint_utils

    import fairseq_distilled_emb  # noqa: F401

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0].eval(), task, first_batch(task, "valid", max_sentences)


def target_log_probs(path, max_sentences: int = 16):
    """``(log-probability of each reference token, target, dictionary)`` of the first valid batch,
    teacher-forced through a saved checkpoint: what two exports of one model must agree on
    (beam hypotheses of a barely trained model flip on near-ties)."""
    import torch

    model, task, batch = loaded_model_and_batch(path, max_sentences)
    with torch.no_grad():
        log_probs = model.get_normalized_probs(model(**batch["net_input"]), log_probs=True)
    target = batch["target"]
    return (log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1), target,
            task.target_dictionary)


def student_train_args(data_bin, teacher_path, save_dir, max_update=6, *extra):
    """fairseq-train flags of a tiny 4x student of ``teacher_path`` with the full method (CPU)."""
    return [
        data_bin, "--user-dir", PLUGIN_DIR, "--task", "translation_reconstruction_init",
        "--teacher-path", teacher_path, "--arch", "distilled_transformer_tiny",
        "--share-all-embeddings", "--embedding-compression", "4",
        "--criterion", "label_smoothed_cross_entropy_with_distillation",
        "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "2000", "--max-update", str(max_update), "--log-format", "simple",
        "--log-interval", "1", "--cpu", "--seed", "1", "--num-workers", "0",
        "--no-epoch-checkpoints", "--save-dir", save_dir, *extra,
    ]


MULTI30K_RAW_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def run_recipe(command, timeout):
    """``python -m examples.<recipe>.run ...`` from the repository root, as the README runs it."""
    return subprocess.run(command, capture_output=True, text=True, env=fairseq_env(),
                          cwd=REPO_ROOT, timeout=timeout)


def raw_multi30k_dir(corpus, directory):
    """The recipes' input layout (``<split>.<lang>.gz``) from the test corpus (real or generated)."""
    directory.mkdir()
    for split, name in MULTI30K_RAW_FILES.items():
        for lang in ("de", "en"):
            with gzip.open(directory / f"{name}.{lang}.gz", "wt", encoding="utf-8") as handle:
                handle.write("\n".join(corpus.lines(split, lang)) + "\n")
    return directory


def check_recipe_bleu(results, rows, references, target):
    """Each translation row's table BLEU is sacreBLEU of the hypotheses it wrote (one per
    reference) against the raw references."""
    import sacrebleu

    for name, row in rows.items():
        out_dir = results / ("teacher" if name == "teacher" else f"rows/{name}")
        hypotheses = (out_dir / f"test.hyp.{target}").read_text(encoding="utf-8").splitlines()
        assert len(hypotheses) == len(references)
        assert row["bleu"] == round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)


def preprocess_english(spm_corpus, destdir, *extra):
    """``fairseq-preprocess --only-source`` of the corpus's English side: a language model's
    data-bin (dict.txt + train/valid/test)."""
    run_fairseq(
        "preprocess", "--only-source",
        "--trainpref", spm_corpus.path("train", "en"),
        "--validpref", spm_corpus.path("valid", "en"),
        "--testpref", spm_corpus.path("test", "en"),
        "--destdir", destdir, "--workers", "1", *extra, timeout=300,
    )
    return destdir
