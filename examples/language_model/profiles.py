"""The language-model recipe's declarations: the profiles (data size, model size, update budgets,
which rows run) and the rows, most of them the translation recipe's own declarations reused (a
student of the teacher, the same-size dense model, the teacher trained on). ``run.py`` runs them;
``benchmarks/schedule_sweep.py --recipe language_model`` reads them from there."""

from dataclasses import dataclass
from typing import List, Optional

from examples.multi30k.profiles import ROWS as TRANSLATION_ROWS
from examples.multi30k.profiles import Row, cosine_fine_tuning


@dataclass
class Profile:
    """Everything a profile changes: data size, model size, update budgets and which rows run."""

    max_sentences: Optional[int]  # lines of each split used (None = all)
    vocab_size: int
    dim: int
    layers: int
    heads: int
    teacher_train: List[str]
    student_train: List[str]
    rows: List[str]
    max_tokens: int = 4096
    notes: str = ""


ALL_ROWS = ["smaller_dim", "svd_linear_8x", "distilled_no_kd_8x", "distilled_4x", "distilled_8x",
            "distilled_16x", "distilled_output_kd_8x", "teacher_continued"]
MAIN_ROWS = ["svd_linear_8x", "smaller_dim", "distilled_4x", "distilled_8x", "distilled_16x",
             "teacher_continued"]
PROFILES = {
    "ci": Profile(
        max_sentences=400, vocab_size=500, dim=64, layers=2, heads=2,
        teacher_train=["--lr", "2e-3", "--warmup-updates", "5", "--max-update", "12"],
        student_train=["--lr", "5e-4", "--warmup-updates", "2", "--max-update", "4"],
        rows=MAIN_ROWS, max_tokens=2000,
        notes="CI profile: a few hundred sentences and a few updates; perplexities are "
        "meaningless here.",
    ),
    "demo": Profile(
        max_sentences=None, vocab_size=4000, dim=128, layers=2, heads=4,
        teacher_train=["--lr", "3e-3", "--warmup-updates", "100", "--max-update", "300"],
        # chosen on valid perplexity (benchmarks/results/schedule-sweep-lm-demo/)
        student_train=cosine_fine_tuning(3e-3, 300),
        rows=MAIN_ROWS,
        notes="Demo profile: teacher d=128, 2 layers, FFN 512, 300 updates of ≤4,096 tokens "
        "(about 3 epochs of the 29k English training captions, sentencepiece 4k); 300 "
        "fine-tuning updates per student (cosine from 3e-3, β=0: chosen on valid); the smaller-dim "
        "dense model gets the teacher's 300 updates from scratch, the continued teacher the "
        "students' 300. Sized for a few minutes of 2 idle CPU cores: the teacher is far from "
        "converged.",
    ),
    "full": Profile(
        max_sentences=None, vocab_size=8000, dim=256, layers=4, heads=4,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "50",
                       "--patience", "5"],
        # the demo's choice (cosine from the teacher's peak) carried over, not checked on valid
        student_train=cosine_fine_tuning(1e-3, 2000),
        rows=ALL_ROWS,
        notes="Full profile: teacher d=256, 4 layers, FFN 1024 (early stopping on valid loss, "
        "patience 5, ≤50 epochs); every student row gets the same 2,000 fine-tuning updates.",
    ),
}

# The translation recipe's row declarations, plus the dense LM of the 8x student's total size.
ROWS = {**{name: TRANSLATION_ROWS[name] for name in ALL_ROWS if name in TRANSLATION_ROWS},
        "smaller_dim": Row("smaller_dim", "smaller-dim dense, same total params as the 8x "
                           "student, from scratch", kind="dense", compression=8)}
TEACHER_DESCRIPTION = "dense teacher (stock transformer_lm_gpt shape, tied embedding)"
# β of the embedding-distillation term, chosen on valid perplexity for the LM students
# (benchmarks/results/schedule-sweep-lm-demo/: β 0 / 0.1 / 1 -> 34.94 / 35.07 / 36.29 at 300
# updates); a row's own flags still override it
STUDENT_BETA = ["--embedding-distill-weight", "0"]
COMMON_TRAIN = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr-scheduler", "inverse_sqrt", "--weight-decay", "0.01", "--no-epoch-checkpoints",
    "--log-format", "simple", "--log-interval", "50", "--seed", "1",
]
