"""The fairseq-train flags of every stage of the Multi30k recipe: the teacher (a stock
transformer), each compressed student of it, the same-size dense rows and the teacher trained on.
One module so that what a row trains with can be built, printed and checked without training
(``tests/examples/``, ``benchmarks/schedule_sweep.py``); ``run.py`` runs them. Each command is
its groups of flags merged (``merge_flags``): a later group's flag replaces an earlier one's, so
every flag appears once, with the value argparse would have kept."""

from pathlib import Path
from typing import Dict, List, Optional

from examples import dense_size
from examples.multi30k.commands import device_flags, merge_flags, without_flags
from examples.multi30k.profiles import COMMON_TRAIN, ROWS
from examples.multi30k.stages import PLUGIN, Profile
from fairseq_distilled_emb import factorization


def arch_settings(profile: Profile) -> Dict[str, str]:
    """The teacher's shape flags as ``{flag: value}``."""
    return dict(zip(profile.teacher_arch[::2], profile.teacher_arch[1::2]))


def teacher_flags(profile: Profile, args, arch: Optional[List[str]] = None) -> List[str]:
    """A stock dense transformer trained with the teacher's recipe (``arch``: another shape)."""
    # --user-dir only for its torch.load allow-list: an interrupted stock run resumes from
    # checkpoint_last.pt, which torch >= 2.6 refuses to unpickle without it
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--arch", "transformer", "--share-all-embeddings",
         "--task", "translation", "--criterion", "label_smoothed_cross_entropy",
         "--max-tokens", str(profile.max_tokens)],
        profile.teacher_arch if arch is None else arch,
        COMMON_TRAIN, profile.teacher_train, device_flags(args.use_gpu, args.fp16))


def student_flags(row: str, profile: Profile, args, teacher: Path) -> List[str]:
    """A compressed student of ``teacher``: the teacher's shape, the common training flags with
    the profile's fine-tuning schedule at the row's compression (cosine replaces the common
    inverse-sqrt), then the row's own flags."""
    spec = ROWS[row]
    return merge_flags(
        ["--user-dir", str(PLUGIN), "--arch", "distilled_transformer", "--share-all-embeddings",
         "--task", "translation_reconstruction_init", "--teacher-path", str(teacher),
         "--embedding-compression", str(spec.compression),
         "--criterion", "label_smoothed_cross_entropy_with_distillation",
         "--max-tokens", str(profile.max_tokens)],
        profile.teacher_arch, COMMON_TRAIN, profile.fine_tuning(spec.compression), spec.flags,
        device_flags(args.use_gpu, args.fp16))


def dense_flags(profile: Profile, args, vocab: int, target_params: int) -> List[str]:
    """A stock dense model with ``target_params`` parameters (narrower d and FFN, same depth and
    heads), trained from scratch with the teacher's recipe."""
    arch = arch_settings(profile)
    layers = int(arch["--encoder-layers"]), int(arch["--decoder-layers"])
    heads = int(arch["--encoder-attention-heads"])
    dim, ffn = dense_size.matching_transformer_shape(vocab, layers, heads, target_params)
    arch.update({"--encoder-embed-dim": dim, "--decoder-embed-dim": dim,
                 "--encoder-ffn-embed-dim": ffn, "--decoder-ffn-embed-dim": ffn})
    return teacher_flags(profile, args, [str(item) for pair in arch.items() for item in pair])


def dense_target_params(teacher_total: int, vocab: int, dim: int, compression: float) -> int:
    """Total parameters of the ``compression``x low-rank student of a teacher (its body + r·(V+d))."""
    rank = factorization.rank_for_compression(vocab, dim, compression)
    return teacher_total - vocab * dim + factorization.factorized_embedding_params(vocab, dim, rank)


def row_flags(row: str, profile: Profile, args, vocab: int, teacher: Path) -> List[str]:
    """The fairseq-train flags of one row: a student of ``teacher``, a stock dense model with the
    ``compression``x student's total parameters (``vocab``: the joined dictionary's size; the size
    is matched to the teacher's shape, so it needs nothing of the teacher's file), or the teacher
    trained on with the students' schedule."""
    spec = ROWS[row]
    if spec.kind == "dense":
        arch = arch_settings(profile)
        dim = int(arch["--encoder-embed-dim"])
        teacher_total = dense_size.transformer_params(
            vocab, dim, int(arch["--encoder-ffn-embed-dim"]), int(arch["--encoder-layers"]),
            int(arch["--decoder-layers"]))
        target = dense_target_params(teacher_total, vocab, dim, spec.compression)
        return dense_flags(profile, args, vocab, target)
    if spec.kind == "continued":
        # the students' budget, not the teacher's early stopping (a patience of 5 epochs could
        # cut the full profile's 2,000 updates short)
        return merge_flags(without_flags(teacher_flags(profile, args), "--max-epoch", "--patience"),
                           profile.fine_tuning(spec.compression),
                           ["--finetune-from-model", str(teacher)])
    return student_flags(row, profile, args, teacher)
