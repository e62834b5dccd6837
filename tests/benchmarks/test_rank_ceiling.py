"""The rank ceiling's teacher with a rank-r tied E: the best rank-r approximation (its error is the
discarded singular values', Eckart-Young), written into both tied names, every other tensor as it
was. The truncation itself is fairseq_distilled_emb.factorization's (tests/test_factorization.py)."""

import torch

from benchmarks.rank_ceiling import with_rank
from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.factorization import svd_relative_error, truncated_svd_factors


def test_the_teacher_file_gets_the_rank_r_e_under_both_tied_names(tmp_path):
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(30, 8, generator=generator)
    layer = torch.randn(8, 8, generator=generator)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": {"decoder.embed_tokens.weight": embedding,
                          "decoder.output_projection.weight": embedding,
                          "decoder.layers.0.fc1.weight": layer},
                "cfg": {"model": {"_name": "transformer_lm"}}, "last_optimizer_state": {}},
               teacher)

    error = with_rank(teacher, 3, tmp_path / "rank3.pt")

    saved = load_checkpoint(tmp_path / "rank3.pt")["model"]
    left, right = truncated_svd_factors(embedding, 3)
    expected = left @ right
    assert torch.linalg.matrix_rank(saved["decoder.embed_tokens.weight"]).item() == 3
    torch.testing.assert_close(saved["decoder.embed_tokens.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(saved["decoder.output_projection.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(saved["decoder.layers.0.fc1.weight"], layer, rtol=0, atol=0)
    assert abs(error - svd_relative_error(embedding, 3)) < 1e-6


def test_dense_rows_keep_the_teachers_head_and_approximate_only_the_tail(tmp_path):
    generator = torch.Generator().manual_seed(2)
    embedding = torch.randn(30, 8, generator=generator)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": {"decoder.embed_tokens.weight": embedding},
                "cfg": {"model": {"_name": "transformer_lm"}}}, teacher)

    error = with_rank(teacher, 2, tmp_path / "head.pt", dense_rows=10)

    saved = load_checkpoint(tmp_path / "head.pt")["model"]["decoder.embed_tokens.weight"]
    left, right = truncated_svd_factors(embedding[10:], 2)
    torch.testing.assert_close(saved, torch.cat([embedding[:10], left @ right]), rtol=0, atol=0)
    tail_error = svd_relative_error(embedding[10:], 2)
    assert abs(error - tail_error * embedding[10:].norm() / embedding.norm()) < 1e-6
