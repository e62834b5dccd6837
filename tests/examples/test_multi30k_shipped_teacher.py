"""The translation recipe's shipped demo teacher (examples/multi30k/demo_teacher/): checked against
its recorded SHA-256 before use, copied into a results directory whole, and never put under another
teacher's name: a teacher the user trained there is refused, not kept or replaced."""

import json
import shutil
from pathlib import Path

import pytest

from examples.multi30k.commands import file_sha256
from examples.multi30k.stages import (
    install_shipped_teacher,
    recorded_sha256,
    verify_shipped_teacher,
)

DEMO_TEACHER = Path(__file__).resolve().parents[2] / "examples" / "multi30k" / "demo_teacher"


def test_the_demo_teacher_installs_once_and_refuses_another_teacher_in_its_place(tmp_path):
    verify_shipped_teacher(DEMO_TEACHER)
    teacher_dir = tmp_path / "results" / "teacher"
    summary = install_shipped_teacher(DEMO_TEACHER, teacher_dir)
    assert summary == json.loads((DEMO_TEACHER / "train.json").read_text())
    checkpoint = teacher_dir / "checkpoint_best.pt"
    assert checkpoint.read_bytes() == (DEMO_TEACHER / "teacher_fp16.pt").read_bytes()
    assert sorted(path.name for path in teacher_dir.iterdir()) == ["checkpoint_best.pt"]
    assert install_shipped_teacher(DEMO_TEACHER, teacher_dir) == summary  # installed: kept as is

    # a teacher trained in these results (--train-teacher) is not relabelled as the shipped one
    checkpoint.write_bytes(b"a teacher the user trained")
    with pytest.raises(SystemExit) as refused:
        install_shipped_teacher(DEMO_TEACHER, teacher_dir)
    assert str(refused.value) == (
        f"error: {checkpoint} is another teacher than the shipped "
        f"{DEMO_TEACHER / 'teacher_fp16.pt'}: pass another --results, or move that checkpoint "
        "away to install the shipped one here")
    assert checkpoint.read_bytes() == b"a teacher the user trained"  # nothing replaced

    # a shipped file changed since it was packed is refused before anything uses it
    corrupted = tmp_path / "demo_teacher"
    shutil.copytree(DEMO_TEACHER, corrupted)
    with open(corrupted / "dict.txt", "a", encoding="utf-8") as handle:
        handle.write("unseen 1\n")
    with pytest.raises(SystemExit) as refused:
        verify_shipped_teacher(corrupted)
    recorded = recorded_sha256(DEMO_TEACHER)["dict.txt"]
    assert str(refused.value) == (
        f"error: {corrupted / 'dict.txt'}: SHA-256 {file_sha256(corrupted / 'dict.txt')} differs "
        f"from the recorded {recorded}; restore the file (git checkout) or pass --train-teacher")
