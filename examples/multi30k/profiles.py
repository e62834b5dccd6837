"""The Multi30k recipe's declarations: the profiles (data size, model shape, update budgets, which
rows run) and the rows (a student of the teacher, a same-size dense model, or the teacher trained
on). ``run.py`` runs them; ``benchmarks/`` and the language-model recipe read them from there."""

from dataclasses import dataclass
from typing import Dict, List, Tuple

from examples.multi30k.stages import REPO, Profile

COMMON_TRAIN = [
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr-scheduler", "inverse_sqrt", "--weight-decay", "0.0001",
    "--label-smoothing", "0.1", "--no-epoch-checkpoints", "--log-format", "simple",
    "--log-interval", "50", "--seed", "1",
    # fairseq's default (-1) breaks the concatenation of train + train1 (gold + teacher output)
    "--upsample-primary", "1",
]
MODEL_256 = [
    "--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
    "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024", "--decoder-ffn-embed-dim",
    "1024", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.3",
]
MODEL_128 = [
    "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
    "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim",
    "512", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.1",
]


@dataclass(frozen=True)
class Row:
    """One benchmark row. ``kind``: ``student`` (a compressed student of the teacher:
    ``compression`` and its ``flags`` on top of the profile's student flags), ``dense`` (a stock
    transformer as wide as gives the ``compression``x student's total parameters, from scratch
    with the teacher's recipe) or ``continued`` (the teacher trained on with the students'
    schedule and budget)."""

    name: str
    description: str
    kind: str = "student"
    compression: float = 0
    flags: Tuple[str, ...] = ()


SVD_LINEAR = ("--embedding-init", "svd", "--embedding-activation", "linear",
              "--embedding-distill-weight", "0")
TENSOR_TRAIN = ("--embedding-factorization", "tensor-train")
ROWS: Dict[str, Row] = {row.name: row for row in [
    Row("teacher_continued", "the dense teacher trained on with the students' schedule and budget "
        "(the reference for what compression costs)", kind="continued"),
    Row("svd_linear_8x", "truncated-SVD linear factorization 8x, fine-tuned without KD",
        compression=8, flags=SVD_LINEAR),
    Row("random_init_8x", "ReLU factorization 8x from random init (+ embedding KD)",
        compression=8, flags=("--embedding-init", "random")),
    Row("distilled_no_kd_8x", "Distilled Embedding 8x without KD (β=0)", compression=8,
        flags=("--embedding-distill-weight", "0")),
    Row("distilled_linear_8x", "Distilled Embedding 8x with linear f", compression=8,
        flags=("--embedding-activation", "linear")),
    *[Row(f"distilled_{ratio}x", f"Distilled Embedding {ratio}x (full method)", compression=ratio)
      for ratio in (4, 8, 16, 32)],
    Row("distilled_output_kd_8x", "Distilled Embedding 8x + output KD (α=0.5, T=2; beyond the "
        "paper)", compression=8, flags=("--kd-alpha", "0.5", "--kd-temperature", "2")),
    Row("tensor_train_8x", "tensor-train embedding (tensorly-torch), same budget, from the "
        "teacher's TT-SVD (+ embedding KD)", compression=8, flags=TENSOR_TRAIN),
    Row("svd_linear_16x", "truncated-SVD linear factorization 16x, fine-tuned without KD",
        compression=16, flags=SVD_LINEAR),
    Row("tensor_train_16x", "tensor-train embedding 16x, from the teacher's TT-SVD (+ embedding "
        "KD)", compression=16, flags=TENSOR_TRAIN),
    # the K most frequent pieces' rows dense, f(U)·W for the rest, in the same parameter budget
    *[Row(f"distilled_{ratio}x_head{rows}", f"Distilled Embedding {ratio}x with the {rows} most "
          "frequent rows dense (dense-head)", compression=ratio,
          flags=("--embedding-factorization", "dense-head", "--embedding-dense-rows", str(rows)))
      for ratio in (8, 16) for rows in (128, 256)],
    # quantization-aware fine-tuning: f(U) fake-quantized to int{bits} codes, as export stores it
    *[Row(f"distilled_{ratio}x_int{bits}", f"Distilled Embedding {ratio}x, quantization-aware: "
          f"f(U) in int{bits} codes", compression=ratio, flags=("--embedding-bits", str(bits)))
      for ratio in (8, 16, 32) for bits in (8, 4, 3, 2)],
    # 16x and 32x with 1-byte row scales (at int3, rank 15: a quarter fewer embedding bytes)
    *[Row(f"distilled_{ratio}x_int{bits}_log8", f"Distilled Embedding {ratio}x, quantization-"
          f"aware: f(U) in int{bits} codes, 1-byte log scales", compression=ratio,
          flags=("--embedding-bits", str(bits), "--embedding-scale-format", "log8"))
      for ratio in (16, 32) for bits in (4, 3, 2)],
    *[Row(f"dense_{ratio}x", f"dense transformer, same total params as the {ratio}x student "
          "(narrower d), from scratch with the teacher's recipe", kind="dense", compression=ratio)
      for ratio in (4, 8, 16, 32)],
]}
ALL_ROWS = list(ROWS)
def cosine_fine_tuning(peak_lr: float, updates: int) -> List[str]:
    """The students' schedule chosen on valid (benchmarks/schedule_sweep.py, demo shape): 50
    warm-up updates to a peak of 1.5x the teacher's own peak, then one cosine half-period down to
    1 % of it over the whole budget (beat inverse-sqrt and fixed at every peak tried)."""
    return ["--lr", f"{peak_lr:g}", "--lr-scheduler", "cosine", "--warmup-updates", "50",
            "--min-lr", f"{peak_lr / 100:g}", "--max-update", str(updates)]


PROFILES = {
    "ci": Profile(
        max_sentences=300, vocab_size=500, teacher_arch=MODEL_128,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "10", "--max-update", "12"],
        student_train=["--lr", "5e-4", "--warmup-updates", "5", "--max-update", "6"],
        # one student: tensor-train has its own end-to-end test
        # (tests/modules/test_tensor_train_embedding.py), SVD-linear's flags and the rank for a
        # ratio theirs (tests/examples/test_recipe_commands.py, tests/test_factorization.py)
        rows=["distilled_8x"],
        # beam 2: still beam search (hypotheses reordered between steps), at less than half of
        # beam 5's decoding time for the models of a few updates, whose output is meaningless
        eval_batch_size=64, beam=2, max_tokens=2000,
        notes="CI profile: a few hundred sentences and a few updates, beam 2; BLEU is "
        "meaningless here.",
    ),
    "demo": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_128,
        # until valid loss stops improving (validated every epoch, patience 5): the shipped
        # teacher stopped after 24 epochs, its best at epoch 23 (3,105 updates)
        teacher_train=["--lr", "2e-3", "--warmup-updates", "200", "--max-epoch", "200",
                       "--patience", "5"],
        student_train=cosine_fine_tuning(3e-3, 400),
        # one student: with svd_linear_8x too (~5 min more) make demo took ~15 min on a fresh
        # clone's 2 cores, at the limit; that row is measured with --rows
        rows=["distilled_8x"],
        shipped_teacher=REPO / "examples" / "multi30k" / "demo_teacher",
        notes="Demo profile: the shipped teacher (d=128, 2+2 layers, trained until valid loss "
        "stopped improving: 3,105 updates; examples/multi30k/demo_teacher/, --train-teacher "
        "retrains it in ~40 minutes), students fine-tuned for 400 updates with the students' "
        "rule (cosine from 1.5x the teacher's peak). The same-size dense model trains like the "
        "teacher, from scratch, which does not fit the demo's minutes: add --rows dense_8x.",
    ),
    "cpu": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_256,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "12"],
        student_train=cosine_fine_tuning(1.5e-3, 500),
        # 16x: 35.85 valid BLEU at 1,000 updates against 33.42 at 500 (2 CPU cores)
        updates_from_compression={16: 1000},
        rows=["distilled_8x", "distilled_16x", "distilled_4x", "svd_linear_8x",
              "teacher_continued", "dense_8x", "dense_16x"],
        notes="CPU profile: the full profile's teacher (3+3 layers, d=256, ffn 1024) stopped after "
        "12 epochs (1,620 updates); the dense rows train from scratch with the same 12 epochs; "
        "students fine-tuned with the schedule chosen on valid at this shape "
        "(benchmarks/results/schedule-sweep-cpu-h100/: 1.5e-3 cosine, 500 updates; 1,000 for "
        "16x and beyond, benchmarks/results/multi30k-cpu-2core/).",
    ),
    "full": Profile(
        max_sentences=None, vocab_size=8000, teacher_arch=MODEL_256,
        teacher_train=["--lr", "1e-3", "--warmup-updates", "1000", "--max-epoch", "60",
                       "--patience", "5"],
        student_train=cosine_fine_tuning(1.5e-3, 2000),
        rows=ALL_ROWS,
        notes="Full profile: teacher 3+3 layers d=256 ffn 1024 (early stopping on valid loss, "
        "patience 5, ≤60 epochs); the dense family uses the teacher's recipe from scratch.",
    ),
}
