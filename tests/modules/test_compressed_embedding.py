"""Adding a kind of compressed embedding is one module plus its registration.

A toy kind (each token's row is one of K shared bucket rows, ``t mod K``) is written to its own
file, registered there and nowhere else, and taken through the stock tools: fairseq-train with the
reconstruction-init task and the distillation criterion (its start from the teacher's E and its
size line in the log), ``export --fp16`` and ``--dense`` (the dense export decodes in stock
fairseq exactly as the student does) and ``stats``.
"""

import json
import subprocess
import sys

import pytest
import torch

from helpers import combined_output, dictionary_size, fairseq_env, hypotheses, run_fairseq
from helpers import student_train_args

TOY_KIND = '''
"""A toy compressed embedding: token t's row is bucket t mod K (K rows of d parameters)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_distilled_emb.modules import CompressedEmbedding, register_compressed_embedding


@register_compressed_embedding("toy-buckets")
class BucketEmbedding(CompressedEmbedding):
    def __init__(self, num_embeddings, embedding_dim, buckets, padding_idx):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.buckets = nn.Parameter(torch.randn(buckets, embedding_dim) * embedding_dim ** -0.5)
        self.register_buffer("bucket_of", torch.arange(num_embeddings) % buckets)
        mask = torch.ones(num_embeddings, 1, dtype=torch.bool)
        mask[padding_idx] = 0
        self.register_buffer("row_mask", mask)

    @classmethod
    def from_args(cls, args, num_embeddings, embedding_dim, padding_idx):
        return cls(num_embeddings, embedding_dim, args.embedding_rank, padding_idx)

    def materialize(self):
        return self.buckets[self.bucket_of] * self.row_mask

    def forward(self, tokens):
        return F.embedding(tokens, self.materialize())

    def logits(self, hidden):
        return F.linear(hidden, self.materialize())

    def size_description(self):
        return f"buckets={self.buckets.shape[0]}"

    @torch.no_grad()
    def initialize_from(self, target, init, name):
        sums = torch.zeros_like(self.buckets).index_add_(0, self.bucket_of, target)
        counts = torch.bincount(self.bucket_of, minlength=len(self.buckets)).clamp_min(1)
        self.buckets.copy_(sums / counts.unsqueeze(1))
        init.log(f"{name}: bucket means of the teacher's rows")
        return {"relative_error": ((self.materialize() - target).norm() / target.norm()).item()}

    @classmethod
    def owns_key(cls, key):
        return key.endswith((".buckets", ".bucket_of", ".row_mask"))

    @classmethod
    def saved_dense_weight(cls, tensors, model_cfg):
        return tensors["buckets"][tensors["bucket_of"]] * tensors["row_mask"]

    @classmethod
    def saved_size(cls, tensors, model_cfg):
        return {"vocab": len(tensors["bucket_of"]), "dim": tensors["buckets"].shape[1],
                "size": f"buckets={tensors['buckets'].shape[0]}"}
'''

#: runs a stock entry point after importing the toy module (what a user's --user-dir would do)
RUNNER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import toy_kind\n"
          "from importlib import import_module\n"
          "module, function = sys.argv.pop(1).split(':'); sys.argv[0] = module\n"
          "getattr(import_module(module), function)()")


def with_toy(tmp_path, entry_point, *args):
    result = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path), entry_point,
                             *map(str, args)], capture_output=True, text=True, env=fairseq_env())
    assert result.returncode == 0, combined_output(result)[-3000:]
    return result


def test_a_toy_kind_registered_in_its_own_file_runs_through_the_stock_tools(
    data_bin, tiny_teacher, tmp_path
):
    (tmp_path / "toy_kind.py").write_text(TOY_KIND)
    save_dir = tmp_path / "student"
    flags = [f for f in student_train_args(data_bin, tiny_teacher.best, save_dir, 3)
             if f not in ("--embedding-compression", "4")]
    train = with_toy(tmp_path, "fairseq_cli.train:cli_main", *flags,
                     "--embedding-factorization", "toy-buckets", "--embedding-rank", "50")
    log = combined_output(train)
    vocab = dictionary_size(data_bin)
    assert f"factorized embedding: V={vocab} d=64 buckets=50 | dense embedding params " \
           f"{vocab * 64:,} | factorized params {50 * 64:,}" in log
    assert "encoder.embed_tokens: bucket means of the teacher's rows" in log
    assert "done training" in log and (save_dir / "checkpoint_last.pt").exists()
    start = json.loads((save_dir / "reconstruction.json").read_text())["embeddings"]
    assert list(start) == ["encoder.embed_tokens"] and start["encoder.embed_tokens"]["kind"] == \
        "toy-buckets" and start["encoder.embed_tokens"]["params"] == 50 * 64
    assert 0 < start["encoder.embed_tokens"]["relative_error"] < 1  # bucket means beat zeros

    student = save_dir / "checkpoint_last.pt"
    exports = {name: tmp_path / f"{name}.pt" for name in ("fp16", "dense")}
    for name, path in exports.items():
        with_toy(tmp_path, "fairseq_distilled_emb.cli.__main__:main", "export", student, path,
                 f"--{name}")
    fp16 = torch.load(exports["fp16"])["model"]
    assert fp16["encoder.embed_tokens.buckets"].dtype == torch.float32  # kept exact
    assert fp16["encoder.layers.0.fc1.weight"].dtype == torch.float16
    dense = torch.load(exports["dense"])
    assert dense["cfg"]["model"]["arch"] == "transformer_tiny"
    trained = torch.load(student, weights_only=False)["model"]
    expected = trained["encoder.embed_tokens.buckets"][trained["encoder.embed_tokens.bucket_of"]]
    expected[1] = 0  # the padding row
    assert torch.equal(dense["model"]["encoder.embed_tokens.weight"], expected)
    assert dense["model"]["decoder.output_projection.weight"] is not None

    decode = ["--gen-subset", "test", "--beam", "1", "--batch-size", "50",
              "--required-batch-size-multiple", "1", "--max-len-b", "10", "--cpu"]
    by_student = with_toy(tmp_path, "fairseq_cli.generate:cli_main", data_bin, "--path", student,
                          *decode)
    by_dense = run_fairseq("generate", data_bin, "--path", exports["dense"], *decode)  # stock
    assert hypotheses(by_dense.stdout) == hypotheses(by_student.stdout) != {}

    stats = with_toy(tmp_path, "fairseq_distilled_emb.cli.__main__:main", "stats", student).stdout
    assert "compressed             buckets=50" in stats
    assert f"{vocab} × 64" in stats and f"{vocab * 64 / (50 * 64):.2f}x" in stats


def test_an_unregistered_kind_is_one_clear_error(data_bin):
    from helpers import build_model_from_flags

    from fairseq_distilled_emb.errors import DistilledEmbeddingError

    with pytest.raises(DistilledEmbeddingError) as error:
        build_model_from_flags(data_bin, "--share-all-embeddings", "--embedding-rank", "8",
                               "--embedding-factorization", "product-quantization")
    assert str(error.value) == (
        "--embedding-factorization product-quantization is not a registered compressed "
        "embedding; choose one of dense-head, low-rank, quantized, quantized-dense-head, "
        "tensor-train")
