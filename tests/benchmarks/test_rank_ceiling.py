"""The rank ceiling's teacher with a rank-r tied E: the best rank-r approximation (its error is the
discarded singular values'), written into both tied names, every other tensor as it was."""

import torch

from benchmarks.rank_ceiling import truncated, with_rank
from fairseq_distilled_emb.checkpoints import load_checkpoint


def test_truncation_keeps_exactly_the_top_singular_directions():
    matrix = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    values = torch.linalg.svdvals(matrix.double())
    approximation = truncated(matrix, 5)
    assert torch.linalg.matrix_rank(approximation).item() == 5
    expected = (values[5:].square().sum().sqrt() / values.square().sum().sqrt()).item()
    error = ((approximation - matrix).norm() / matrix.norm()).item()
    assert abs(error - expected) < 1e-6


def test_the_teacher_file_gets_the_truncated_e_under_both_tied_names(tmp_path):
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
    expected = truncated(embedding, 3)
    torch.testing.assert_close(saved["decoder.embed_tokens.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(saved["decoder.output_projection.weight"], expected, rtol=0, atol=0)
    torch.testing.assert_close(saved["decoder.layers.0.fc1.weight"], layer, rtol=0, atol=0)
    assert abs(error - ((expected - embedding).norm() / embedding.norm()).item()) < 1e-6
