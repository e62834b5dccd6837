"""The fairseq-train flags of every stage of the language-model recipe: the teacher (a stock
transformer_lm_gpt), each compressed student of it, the same-size dense and adaptive-input rows
and the teacher trained on. One module so that what a row trains with can be built, printed and
checked without training (``tests/examples/``, ``benchmarks/``); ``run.py`` runs them. Each
command is its groups of flags merged (``merge_flags``): a later group's flag replaces an earlier
one's."""

from pathlib import Path
from typing import List, Optional, Tuple

from examples import adaptive_size, dense_size
from examples.language_model import corpora
from examples.language_model.profiles import COMMON_TRAIN, ROWS, STUDENT_BETA, Profile
from examples.multi30k.commands import device_flags, merge_flags, without_flags
from examples.multi30k.stages import PLUGIN
from examples.multi30k.training_flags import dense_target_params
from fairseq_distilled_emb import factorization


def arch_flags(dim: int, layers: int, heads: int) -> List[str]:
    """fairseq's transformer_lm_gpt family (pre-norm, gelu, tied) at the given size."""
    return ["--decoder-embed-dim", str(dim), "--decoder-ffn-embed-dim", str(4 * dim),
            "--decoder-layers", str(layers), "--decoder-attention-heads", str(heads),
            "--share-decoder-input-output-embed", "--dropout", "0.1", "--attention-dropout", "0.1"]


def teacher_flags(profile: Profile, args, dim: Optional[int] = None,
                  embedding: Optional[List[str]] = None) -> List[str]:
    """A stock dense transformer_lm_gpt (``dim``: another width; ``embedding``: adaptive input
    flags, which replace the tied embedding) with the teacher's recipe; --user-dir only for its
    torch.load allow-list (resuming, --finetune-from-model)."""
    shape = arch_flags(dim or profile.dim, profile.layers, profile.heads)
    if embedding:  # adaptive softmax's own loss (fairseq's adaptive_loss: the same cross-entropy)
        shape = [flag for flag in shape if flag != "--share-decoder-input-output-embed"] + embedding
        shape += ["--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp"]
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--task", "language_modeling", "--arch", "transformer_lm_gpt",
         "--criterion", "cross_entropy", "--max-tokens", str(profile.max_tokens)],
        corpora.sample_flags(profile), shape,
        COMMON_TRAIN, profile.teacher_train, device_flags(args.use_gpu, args.fp16))


def student_flags(row: str, profile: Profile, args, teacher: Path) -> List[str]:
    """A compressed student of ``teacher``: the teacher's shape, the common training flags with
    the profile's fine-tuning schedule, the LM students' β, then the row's own flags (a row's
    ``--embedding-distill-weight`` replaces that β)."""
    spec = ROWS[row]
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--task", "language_modeling_reconstruction_init",
         "--teacher-path", str(teacher), "--arch", "distilled_transformer_lm_gpt",
         "--embedding-compression", str(spec.compression),
         "--criterion", "label_smoothed_cross_entropy_with_distillation",
         "--label-smoothing", "0.0", "--max-tokens", str(profile.max_tokens)],
        corpora.sample_flags(profile), arch_flags(profile.dim, profile.layers, profile.heads),
        COMMON_TRAIN, profile.student_train, STUDENT_BETA, spec.flags,
        device_flags(args.use_gpu, args.fp16))


def row_flags(row: str, profile: Profile, args, vocab: int, teacher: Optional[Path]) -> List[str]:
    """The fairseq-train flags of one row: a student of ``teacher``, a narrower dense LM with the
    ``compression``x student's total parameters (the teacher's counted from its shape, as
    fairseq counts them), a stock adaptive-input LM with the student's embedding parameters, or
    the teacher trained on with the students' schedule."""
    spec = ROWS[row]
    if spec.kind == "dense":
        teacher_total = dense_size.transformer_lm_params(vocab, profile.dim, profile.layers)
        target = dense_target_params(teacher_total, vocab, profile.dim, spec.compression)
        width = dense_size.matching_lm_width(vocab, profile.layers, profile.heads, target)
        return teacher_flags(profile, args, dim=width)
    if spec.kind == "adaptive":
        cutoffs, factor, _params = adaptive_embedding(vocab, profile.dim, spec.compression)
        return teacher_flags(profile, args, embedding=adaptive_size.adaptive_flags(cutoffs, factor))
    if spec.kind == "continued":
        # the students' budget, not the teacher's early stopping (as the translation recipe's)
        return merge_flags(without_flags(teacher_flags(profile, args), "--max-epoch", "--patience"),
                           profile.student_train, ["--finetune-from-model", str(teacher)])
    return student_flags(row, profile, args, teacher)


def student_embedding_params(vocab: int, dim: int, compression: float) -> int:
    """r·(V+d) of the ``compression``x low-rank student."""
    rank = factorization.rank_for_compression(vocab, dim, compression)
    return factorization.factorized_embedding_params(vocab, dim, rank)


def adaptive_embedding(vocab: int, dim: int, compression: float) -> Tuple[List[int], int, int]:
    """(cutoffs, factor, embedding parameters) of the adaptive input whose parameters match the
    ``compression``x student's (within 5 %, or an error line: a small vocabulary's coarsest bands
    can hold more than the student)."""
    target = student_embedding_params(vocab, dim, compression)
    cutoffs, factor = adaptive_size.matching_adaptive_cutoffs(vocab, dim, target)
    found = adaptive_size.adaptive_embedding_params(vocab, dim, cutoffs, factor)
    if abs(found / target - 1) > 0.05:
        raise SystemExit(
            f"error: adaptive_{compression:g}x: no adaptive input of V={vocab}, d={dim} has the "
            f"{compression:g}x student's {target:,} embedding parameters (the closest, cutoffs "
            f"{','.join(map(str, cutoffs))} factor {factor}, has {found:,}); leave the row out")
    return cutoffs, factor, found
