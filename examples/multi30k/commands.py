"""Running the recipe's commands: each stock fairseq command's output goes to its own log (and,
for fairseq-train, one short progress line per logged update to the console); stage markers are
written atomically and reused only with the settings they were made with; the device flags
every training command gets; flag groups merged into one command with each flag once."""

import hashlib
import json
import logging
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)
#: the line ``run`` writes before each further run of a stage into the same log (read back by
#: ``examples.multi30k.train_log``)
RUN_AGAIN = "# run again"


def log_like_fairseq_cli() -> None:
    """fairseq_cli's log format, INFO and up, on stdout. ``force``: importing fairseq has already
    configured the root logger (its default format, on stderr, at DEBUG), which would otherwise
    print every library's debug lines (matplotlib's font search: thousands of them)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")


def fairseq_tool(name):
    """The console script next to this Python (the venv's), falling back to PATH."""
    candidate = Path(sys.executable).parent / f"fairseq-{name}"
    return str(candidate) if candidate.exists() else f"fairseq-{name}"


def run(command, log_path: Path, stdin: Optional[str] = None) -> str:
    """Run a command, append its output to ``log_path``, return it; fail with the output's tail.

    stdout and stderr are read separately and joined (not interleaved): fairseq's progress bar
    writes carriage returns to stderr which would otherwise glue onto the start of stdout lines
    (``S-5``/``D-5``), making whole sentences look dropped from fairseq-generate's output. stdout
    is written to the log as it arrives, and each of fairseq-train's own progress lines is echoed
    as one short line (stage, update against the budget, loss), so a long stage is not silent.
    A stage run again (resumed, or retrained after its outputs were moved away) appends to its log
    after a ``# run again`` header line instead of replacing it: a teacher trained over several
    runs keeps its whole valid curve in one file.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("$ " + shlex.join(command))  # quoted as a shell needs it: '(0.9, 0.98)'
    started = time.perf_counter()
    budget = flag_values(command).get("--max-update") or "?"
    process = subprocess.Popen(command, stdin=subprocess.PIPE if stdin is not None else None,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: List[str] = []
    readers = [threading.Thread(target=lambda: stderr.append(process.stderr.read()))]
    if stdin is not None:
        readers.append(threading.Thread(target=_write_and_close, args=(process.stdin, stdin)))
    for reader in readers:
        reader.start()
    stdout = []
    with open(log_path, "a") as log:
        if log.tell():
            log.write(f"\n{RUN_AGAIN} {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
        for line in process.stdout:
            stdout.append(line)
            log.write(line)
            log.flush()
            progress = _progress(line, budget)
            if progress:
                logger.info(f"  {log_path.stem}: {progress} ({time.perf_counter() - started:.0f}s)")
        for reader in readers:
            reader.join()
        log.write("\n" + "".join(stderr))
    output = "".join(stdout) + "\n" + "".join(stderr)
    if process.wait() != 0:
        raise SystemExit(
            f"error: command failed ({process.returncode}): {shlex.join(command)}\n"
            f"--- last lines of {log_path} ---\n{output[-3000:]}"
        )
    logger.info(f"  done in {time.perf_counter() - started:.0f}s (log: {log_path})")
    return output


def _write_and_close(stream, text: str) -> None:
    stream.write(text)
    stream.close()


_TRAIN_INNER = re.compile(r"\| train_inner \|.*?\bloss=([\d.]+).*?\bnum_updates=(\d+)")
_VALID = re.compile(r"\| valid on '(\w+)' subset \| loss ([\d.]+).*?\| num_updates (\d+)")


def _progress(line: str, budget: str) -> Optional[str]:
    """One short line for fairseq-train's train_inner / valid log lines (None for the rest)."""
    match = _TRAIN_INNER.search(line)
    if match:
        return f"update {match.group(2)}/{budget}, train loss {match.group(1)}"
    match = _VALID.search(line)
    if match:
        return f"update {match.group(3)}/{budget}, {match.group(1)} loss {match.group(2)}"
    return None


def write_json(path: Path, payload):
    """Write atomically: a killed run never leaves a half-written stage marker."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(path)


def device_flags(use_gpu: bool, fp16: bool):
    """--cpu, or --fp16 on GPU with a short loss-scale window: the ReLU students overflow at the
    start (seen on an H100: the scale fell 128 -> 1 and stayed there for 1,000 updates with
    fairseq's default window of 16,384 updates)."""
    if not use_gpu:
        return ["--cpu"]
    return ["--fp16", "--fp16-scale-window", "128"] if fp16 else []


def merge_flags(*groups: Sequence[str]) -> List[str]:
    """Groups of ``--flag [value ...]`` items (the common training flags, a profile's schedule, a
    row's own flags, ...) as one command line that carries each flag once. A flag given again
    replaces its earlier occurrence, value and place: the value is the later one, the one argparse
    kept when both were passed (every option here stores one value), so the run is unchanged, and
    each group still reads as written.
    The printed command is then what a user would type, and nothing in it is silently
    overridden further along."""
    merged: Dict[str, List[str]] = {}
    for group in groups:
        for flag, values in _flag_items(group):
            merged.pop(flag, None)
            merged[flag] = values
    return [token for flag, values in merged.items() for token in (flag, *values)]


def without_flags(flags: Sequence[str], *names: str) -> List[str]:
    """``flags`` less each ``--name`` in ``names`` and its values: for a flag that the rest of the
    command no longer accepts (``--min-lr`` once the scheduler is not cosine)."""
    return [token for flag, values in _flag_items(flags) if flag not in names
            for token in (flag, *values)]


def _flag_items(group: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``[--a, 1, --b, --c, x]`` as ``[(--a, [1]), (--b, []), (--c, [x])]``."""
    items: List[Tuple[str, List[str]]] = []
    for token in group:
        if token.startswith("--"):
            items.append((token, []))
        elif items:
            items[-1][1].append(token)
        else:
            raise ValueError(f"{token!r} is not an option: merge_flags takes --flag groups only")
    return items


#: options that say where a training ran or where its files are, not what it trained: a finished
#: stage is reused across them (a results directory moved, a teacher seeded from a GPU run)
WHERE_NOT_WHAT = {"--user-dir", "--teacher-path", "--finetune-from-model", "--cpu", "--fp16",
                  "--fp16-scale-window", "--save-dir"}


def flag_values(flags: Sequence[str]) -> Dict[str, str]:
    """``flags`` as option → value, the last value winning (as argparse's); "" for a switch."""
    values: Dict[str, str] = {}
    for index, flag in enumerate(flags):
        if flag.startswith("--"):
            value = flags[index + 1] if index + 1 < len(flags) else ""
            values[flag] = "" if value.startswith("--") else value
    return values


def training_settings(flags: List[str]) -> Dict[str, str]:
    """``flag_values`` without the options of ``WHERE_NOT_WHAT``: what a finished training is
    compared by before it is reused."""
    return {key: value for key, value in flag_values(flags).items() if key not in WHERE_NOT_WHAT}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a block at a time (a teacher checkpoint is 100+ MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: the options naming the checkpoint a training starts from (a student's teacher, a continued one)
STARTS_FROM = ("--teacher-path", "--finetune-from-model")


def starting_checkpoint(flags: List[str]) -> Dict[str, str]:
    """``{"teacher sha256": the first 16 hex digits}`` of the checkpoint ``flags`` start from,
    when it exists: where that file lives does not matter (``WHERE_NOT_WHAT``), what it holds
    does, so a student finished against one teacher is not reused for another."""
    values = flag_values(flags)
    path = next((values[flag] for flag in STARTS_FROM if flag in values), None)
    if not path or not Path(path).is_file():
        return {}
    return {"teacher sha256": file_sha256(Path(path))[:16]}


def refuse_other_settings(done: Path, settings: Dict[str, str]) -> Dict:
    """A finished stage's summary, reused only with the settings it was trained with: a changed
    budget or learning rate must not silently reuse the old model (nor overwrite it)."""
    summary = json.loads(done.read_text())
    recorded = summary.get("settings")
    if "teacher sha256" not in (recorded or {}) or "teacher sha256" not in settings:
        # recorded before teachers were, or the teacher file is gone: nothing to compare it by
        settings = {key: value for key, value in settings.items() if key != "teacher sha256"}
        recorded = None if recorded is None else {
            key: value for key, value in recorded.items() if key != "teacher sha256"}
    if recorded is None:  # written before settings were recorded: its updates are all we know
        if "--max-update" not in settings or "updates" not in summary:
            return summary
        recorded = {"--max-update": str(summary["updates"])}
        settings = {"--max-update": settings["--max-update"]}
    if recorded == settings:
        return summary
    changed = ", ".join(f"{key} {recorded.get(key, '(unset)')} → {settings.get(key, '(unset)')}"
                        for key in sorted(set(recorded) | set(settings))
                        if recorded.get(key) != settings.get(key))
    raise SystemExit(f"error: {done.parent} was trained with other settings ({changed}); move it "
                     "away to train it again, or pass another --results")
