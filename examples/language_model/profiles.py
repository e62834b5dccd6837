"""The language-model recipe's declarations: the profiles (data size, model size, update budgets,
which rows run) and the rows, most of them the translation recipe's own declarations reused (a
student of the teacher, the same-size dense model, the teacher trained on). ``run.py`` runs them;
``benchmarks/schedule_sweep.py --recipe language_model`` reads them from there."""

from dataclasses import dataclass, replace
from pathlib import Path
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
    corpus: str = "multi30k"  # or "wikitext2" (examples/language_model/corpora.py)
    tokens_per_sample: int = 128
    context_window: int = 0  # fairseq-eval-lm --context-window (running text only)
    # fairseq-eval-lm --softmax-batch: positions normalized at a time. Speed only (the scores are
    # the same); 64 was the fastest of 64/128/256 for the wikitext2-cpu teacher and 8x student on
    # valid (benchmarks/results/lm-wikitext2-cpu-speed/), and 2x faster than one T×V softmax
    softmax_batch: int = 64
    # every row also scored on valid (fairseq-eval-lm --gen-subset valid): where the by-bytes
    # choices between rows are made; off where the numbers are only plumbing or for a quick demo
    score_valid: bool = False
    # a teacher this profile trained, packed by examples/language_model/shipped_teacher.py and
    # committed: installed instead of training one (``--train-teacher`` trains it anyway)
    shipped_teacher: Optional[Path] = None


#: dense-head students sized for a word-level vocabulary (WikiText-2's 33,280 words): at 8x the
#: budget holds ~4,160 dense rows, so the head is 1,000 or 2,000 words (500 or 1,000 at 16x); the
#: head halves with each doubling of compression, so 2,000 words at 4x (tail rank 51) and 250 at
#: 32x (tail rank 6)
DENSE_HEAD_SHAPES = ((4, 2000), (8, 1000), (8, 2000), (16, 500), (16, 1000), (32, 250))
DENSE_HEAD_ROWS = [f"distilled_{ratio}x_head{rows}" for ratio, rows in DENSE_HEAD_SHAPES]
#: each of them post-training in int8 and int4 codes (``export --embedding-bits``)
DENSE_HEAD_PTQ_ROWS = [f"{row}_ptq_int{bits}" for row in DENSE_HEAD_ROWS for bits in (8, 4)]
# (not the translation recipe's distilled_no_kd_8x: with STUDENT_BETA every LM student is β=0, so
# it would be distilled_8x again)
ALL_ROWS = ["smaller_dim", "svd_linear_8x", "distilled_4x", "distilled_8x", "distilled_16x",
            "distilled_32x", "distilled_output_kd_8x", "tensor_train_8x", "adaptive_8x",
            "adaptive_16x", "teacher_int8", "teacher_int4", "teacher_int3", "teacher_int2",
            "distilled_8x_ptq_int8", "distilled_8x_ptq_int4", "distilled_16x_ptq_int8",
            "adaptive_8x_ptq_int8", "adaptive_8x_ptq_int4", "adaptive_16x_ptq_int8",
            "adaptive_16x_ptq_int4", "teacher_continued", *DENSE_HEAD_ROWS, *DENSE_HEAD_PTQ_ROWS]
MAIN_ROWS = ["svd_linear_8x", "smaller_dim", "distilled_4x", "distilled_8x", "distilled_16x",
             "teacher_continued"]
#: WikiText-2: the students, every baseline a user would try first, and the post-training rows,
#: in the order they run: the byte frontier first (the teacher's E in codes, 8x, 16x, the
#: students' f(U) in codes), then the rest of the rows that fit the cpu budget, then the
#: from-scratch rows (hours each on 2 cores)
WIKITEXT_ROWS = ["teacher_int8", "teacher_int4", "teacher_int3", "teacher_int2", "distilled_8x",
                 "distilled_16x", "distilled_8x_ptq_int8", "distilled_8x_ptq_int4",
                 "distilled_16x_ptq_int8", "teacher_continued", *DENSE_HEAD_ROWS,
                 *DENSE_HEAD_PTQ_ROWS,
                 "svd_linear_8x", "distilled_4x",
                 "distilled_32x", "tensor_train_8x", "adaptive_8x", "adaptive_16x",
                 "adaptive_8x_ptq_int8", "adaptive_8x_ptq_int4", "adaptive_16x_ptq_int8",
                 "adaptive_16x_ptq_int4", "smaller_dim"]
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
        # (not the dense-head rows: a 1,000-word head is all of an 8x budget at V=8k)
        rows=[row for row in ALL_ROWS if row not in DENSE_HEAD_ROWS + DENSE_HEAD_PTQ_ROWS],
        notes="Full profile: teacher d=256, 4 layers, FFN 1024 (early stopping on valid loss, "
        "patience 5, ≤50 epochs); every student row gets the same 2,000 fine-tuning updates.",
    ),
    "wikitext2-ci": Profile(
        corpus="wikitext2", max_sentences=300, vocab_size=1000, dim=64, layers=2, heads=2,
        tokens_per_sample=64, context_window=32,
        teacher_train=["--lr", "2e-3", "--warmup-updates", "5", "--max-update", "12"],
        student_train=["--lr", "5e-4", "--warmup-updates", "2", "--max-update", "4"],
        rows=["distilled_8x", "adaptive_8x", "teacher_int4", "distilled_8x_ptq_int8",
              "adaptive_8x_ptq_int8"],
        max_tokens=2048,
        notes="CI profile: the first 300 lines of each WikiText-2 split, 1,000 words; "
        "perplexities are meaningless here.",
    ),
    "wikitext2-cpu": Profile(
        corpus="wikitext2", max_sentences=None, vocab_size=0, dim=256, layers=2, heads=4,
        tokens_per_sample=256, context_window=128,
        # validated and saved every 128 updates and only then (an epoch is 255 updates of 8,192
        # tokens; no extra end-of-epoch validation), so a run stopped mid-epoch resumes there;
        # stopped after 3 validations (384 updates, 1.5 epochs) without a better valid loss. (The
        # first teacher had patience 6: its last 6 validations, 768 updates, ~75 minutes of 2
        # cores, found nothing better than 2,304 updates, and patience 3 would have kept the same
        # checkpoint: benchmarks/results/lm-wikitext2-cpu/README.md.)
        teacher_train=["--lr", "2e-3", "--warmup-updates", "250", "--max-epoch", "40",
                       "--save-interval-updates", "128", "--keep-interval-updates", "1",
                       "--validate-interval", "1000", "--save-interval", "1000",
                       "--patience", "3"],
        # ~3.5 epochs, cosine: the peak chosen on valid perplexity of the 8x student
        # (benchmarks/results/lm-wikitext2-cpu/first-teacher/sweep/: 3e-3 / 1e-3 / 3e-4 ->
        # 189.56 / 166.83 / 167.38; the translation students' rule, 1.5x the teacher's peak,
        # wrecked the body), the budget with the shipped teacher (benchmarks/results/
        # lm-wikitext2-cpu/sweep/: 8x dense-head, 300 / 900 updates -> 129.78 / 118.80)
        student_train=cosine_fine_tuning(1e-3, 900),
        rows=WIKITEXT_ROWS, max_tokens=8192, score_valid=True,
        # trained by this profile (2,816 updates, best valid at 2,304) and packed: its README
        shipped_teacher=Path(__file__).resolve().parent / "wikitext2_cpu_teacher",
        notes="cpu profile: WikiText-2 word level (33,280 symbols), teacher transformer_lm_gpt "
        "d=256, 2 layers, FFN 1024, tied (84 % of its parameters are the embedding), blocks of "
        "256 tokens, until valid loss stops improving (validated every 128 updates, patience 3: "
        "1.5 epochs); 900 fine-tuning updates of 8,192 tokens per student; the adaptive-input and "
        "dense rows train from scratch with the teacher's recipe.",
    ),
    "wikitext2-full": Profile(
        corpus="wikitext2", max_sentences=None, vocab_size=0, dim=512, layers=4, heads=8,
        tokens_per_sample=512, context_window=256,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "100",
                       "--patience", "5"],
        student_train=cosine_fine_tuning(1.5e-3, 2000),
        rows=WIKITEXT_ROWS, max_tokens=8192, score_valid=True,
        notes="Full profile (a GPU): WikiText-2 word level, teacher d=512, 4 layers, FFN 2048, "
        "blocks of 512 tokens, early stopping (patience 5 epochs); 2,000 fine-tuning updates per "
        "student.",
    ),
}

# The translation recipe's row declarations, plus the dense LM of the 8x student's total size.
ROWS = {**{name: TRANSLATION_ROWS[name] for name in ALL_ROWS if name in TRANSLATION_ROWS},
        # the LM students train with β = 0 (STUDENT_BETA), tensor-train included: no embedding KD
        **{f"distilled_{ratio}x": replace(TRANSLATION_ROWS[f"distilled_{ratio}x"], description=(
            f"Distilled Embedding {ratio}x (reconstruction init, fine-tuned with β=0)"))
           for ratio in (4, 8, 16, 32)},
        "tensor_train_8x": replace(TRANSLATION_ROWS["tensor_train_8x"], description=(
            "tensor-train embedding (tensorly-torch), same budget, from the teacher's TT-SVD")),
        "smaller_dim": Row("smaller_dim", "smaller-dim dense, same total params as the 8x "
                           "student, from scratch", kind="dense", compression=8),
        **{f"distilled_{ratio}x_head{rows}": Row(
            f"distilled_{ratio}x_head{rows}", f"Distilled Embedding {ratio}x with the {rows} most "
            "frequent words' rows dense (dense-head)", compression=ratio,
            flags=("--embedding-factorization", "dense-head", "--embedding-dense-rows", str(rows)))
           for ratio, rows in DENSE_HEAD_SHAPES},
        **{f"adaptive_{ratio}x": Row(
            f"adaptive_{ratio}x", f"stock adaptive input + tied adaptive softmax, embedding "
            f"bytes of the {ratio}x student, from scratch", kind="adaptive", compression=ratio)
           for ratio in (8, 16)}}


@dataclass
class PostTrainingRow:
    """A row that trains nothing: ``base``'s checkpoint exported with its embedding (a teacher's
    E, a student's f(U)) in ``bits``-bit per-row codes (``fairseq-distilled-emb export
    --embedding-bits``), then scored."""

    name: str
    base: str
    bits: int

    @property
    def description(self) -> str:
        what = ("teacher's E" if self.base == "teacher" else f"{self.base}'s bands"
                if self.base.startswith("adaptive") else f"{self.base}'s head rows and tail f(U)"
                if self.base in DENSE_HEAD_ROWS else f"{self.base}'s f(U)")
        return f"the {what} in int{self.bits} codes, post-training (no training)"


POST_TRAINING_ROWS = {row.name: row for row in [
    PostTrainingRow("teacher_int8", "teacher", 8), PostTrainingRow("teacher_int4", "teacher", 4),
    PostTrainingRow("teacher_int3", "teacher", 3), PostTrainingRow("teacher_int2", "teacher", 2),
    PostTrainingRow("distilled_8x_ptq_int8", "distilled_8x", 8),
    PostTrainingRow("distilled_8x_ptq_int4", "distilled_8x", 4),
    PostTrainingRow("distilled_16x_ptq_int8", "distilled_16x", 8),
    # a user's own alternative beyond 16x: stock adaptive input, its bands in codes
    PostTrainingRow("adaptive_8x_ptq_int8", "adaptive_8x", 8),
    PostTrainingRow("adaptive_8x_ptq_int4", "adaptive_8x", 4),
    PostTrainingRow("adaptive_16x_ptq_int8", "adaptive_16x", 8),
    PostTrainingRow("adaptive_16x_ptq_int4", "adaptive_16x", 4),
    # beyond what int codes of E reach (int3, int2 break it): a dense-head student in codes
    *[PostTrainingRow(f"{base}_ptq_int{bits}", base, bits)
      for base in DENSE_HEAD_ROWS for bits in (8, 4)]]}
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
