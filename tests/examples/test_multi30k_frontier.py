"""The size–quality frontier's dense rows: each has its compressed row's total parameter count.

The models are built by fairseq itself from the recipe's own flags (the demo and cpu shapes, an
8,008-symbol joined dictionary as the recipe's), and their parameters counted, so the check holds
for the models the benchmark really trains, not for a formula.
"""

import pytest

from benchmarks.common import load_recipe
from helpers import PLUGIN_DIR


@pytest.fixture(scope="module")
def joined_dictionary(tmp_path_factory):
    """A data directory holding only an 8,008-symbol joined dictionary (4 specials + 8,004)."""
    directory = tmp_path_factory.mktemp("dict-only")
    lines = "".join(f"piece{i} {10_000 - i}\n" for i in range(8004))
    for lang in ("de", "en"):
        (directory / f"dict.{lang}.txt").write_text(lines)
    return directory


def built_params(data_bin, flags):
    from fairseq import options, tasks

    args = options.parse_args_and_arch(options.get_training_parser(),
                                       input_args=[str(data_bin), "--source-lang", "de",
                                                   "--target-lang", "en", *map(str, flags)])
    model = tasks.setup_task(args).build_model(args)
    return sum(p.numel() for p in model.parameters())


def strip_training_only(flags):
    """The model-shaping flags of a recipe command (the teacher file is not read to count)."""
    flags = list(flags)
    if "--teacher-path" in flags:
        index = flags.index("--teacher-path")
        del flags[index:index + 2]
        flags[flags.index("translation_reconstruction_init")] = "translation"
    return flags


@pytest.mark.parametrize("profile_name", ["demo", "cpu"])
@pytest.mark.parametrize("row", ["dense_4x", "dense_8x", "dense_16x", "dense_32x"])
def test_dense_row_matches_its_compressed_rows_total_parameters(
    joined_dictionary, profile_name, row
):
    recipe = load_recipe()
    profile = recipe.PROFILES[profile_name]

    class Args:
        use_gpu, fp16 = False, False

    teacher_total = built_params(joined_dictionary, recipe.teacher_flags(profile, Args))
    vocab = recipe.dictionary_size(joined_dictionary)
    dim = int(recipe.arch_settings(profile)["--encoder-embed-dim"])
    compression = recipe.ROWS[row].compression
    student = strip_training_only(
        recipe.student_flags(f"distilled_{compression}x", profile, Args, "unused.pt"))
    student_total = built_params(joined_dictionary, student)
    assert recipe.dense_target_params(teacher_total, vocab, dim, compression) == student_total
    dense = recipe.dense_flags(profile, Args, vocab, student_total)
    dense_total = built_params(joined_dictionary, dense)
    assert abs(dense_total - student_total) / student_total < 0.02
    assert str(PLUGIN_DIR) in dense  # the dense rows resume through the plugin's safe loader
