"""Install/runtime compatibility: torch>=2.6 safe loading of fairseq checkpoints, no torchaudio,
numpy<2 (each checked against the real environment, in fresh interpreters where import order
matters)."""

import datetime
import pickle

import pytest
import torch

import fairseq_distilled_emb  # noqa: F401  (the import under test: allow-lists checkpoint classes)
from helpers import run_python


@pytest.fixture(autouse=True)
def default_torch_load(monkeypatch):
    # make sure torch.load really runs with its default (weights_only=True on torch >= 2.6)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)


def torch_defaults_to_weights_only():
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 6)


def test_plain_torch_load_reads_the_student_checkpoint(tiny_student_checkpoint):
    state = torch.load(tiny_student_checkpoint.best)  # default arguments, on purpose
    assert "encoder.embed_tokens.U" in state["model"]
    assert "encoder.embed_tokens.W" in state["model"]
    cfg = state["cfg"]
    assert cfg["model"].arch == "distilled_transformer_tiny"
    assert cfg["model"].embedding_compression == 4
    assert state["extra_state"]["train_iterator"]["epoch"] >= 1


def test_plain_torch_load_reads_a_stock_dense_checkpoint(tiny_dense_checkpoint):
    state = torch.load(tiny_dense_checkpoint.best)
    assert "encoder.embed_tokens.weight" in state["model"]
    assert state["cfg"]["model"].arch == "transformer_tiny"


def test_safe_loading_stays_on_for_other_classes(tmp_path):
    if not torch_defaults_to_weights_only():
        pytest.skip("torch < 2.6 does not default to weights_only")
    path = tmp_path / "not_a_checkpoint.pt"
    torch.save({"when": datetime.datetime(2020, 1, 1)}, path)
    with pytest.raises(pickle.UnpicklingError, match="datetime"):
        torch.load(path)
    assert torch.load(path, weights_only=False)["when"].year == 2020


LOAD_IN_FRESH_PROCESS = """
import pickle, sys, torch
{preamble}
try:
    torch.load(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except pickle.UnpicklingError as exc:
    print("UNPICKLING ERROR:", str(exc).splitlines()[0])
    sys.exit(3)
print("LOADED")
"""


@pytest.mark.parametrize("preamble", ["", "import fairseq"], ids=["torch-only", "with-fairseq"])
def test_without_the_plugin_torch_load_rejects_checkpoints(tiny_student_checkpoint, preamble):
    """Proves the two tests above can fail: stock torch refuses fairseq checkpoints."""
    if not torch_defaults_to_weights_only():
        pytest.skip("torch < 2.6 does not default to weights_only")
    code = LOAD_IN_FRESH_PROCESS.format(preamble=preamble, path=str(tiny_student_checkpoint.best))
    result = run_python(code, check=False)
    assert result.returncode == 3, result.stdout + result.stderr[-2000:]
    assert "UNPICKLING ERROR" in result.stdout


def test_with_the_plugin_torch_load_accepts_checkpoints_in_a_fresh_process(tiny_dense_checkpoint):
    code = LOAD_IN_FRESH_PROCESS.format(
        preamble="import fairseq_distilled_emb", path=str(tiny_dense_checkpoint.best)
    )
    result = run_python(code, check=False)
    assert result.returncode == 0 and "LOADED" in result.stdout, result.stderr[-2000:]


def test_import_does_not_load_torchaudio():
    result = run_python(
        "import sys, fairseq_distilled_emb\n"
        "import fairseq_distilled_emb.models, fairseq_distilled_emb.modules\n"
        "print('TORCHAUDIO' if 'torchaudio' in sys.modules else 'CLEAN')\n"
        "print(len(sys.modules))"
    )
    assert result.stdout.splitlines()[0] == "CLEAN", result.stdout


def test_import_registers_architectures_in_a_fresh_process():
    result = run_python(
        "import fairseq_distilled_emb\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        "print(sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith('distilled_transformer')))"
    )
    for arch in (
        "distilled_transformer", "distilled_transformer_tiny", "distilled_transformer_iwslt_de_en",
        "distilled_transformer_wmt_en_de", "distilled_transformer_vaswani_wmt_en_de_big",
        "distilled_transformer_wmt_en_de_big",
    ):
        assert f"'{arch}'" in result.stdout


def test_numpy_without_compat_gets_the_alias_fairseq_needs():
    """Under numpy 2 (no ``np.compat``) the plugin's import restores ``np.compat.long`` so stock
    fairseq's LanguagePairDataset still buckets lengths (``np.vectorize(..., otypes=[np.compat.long])``;
    without the plugin this raises AttributeError); simulated by deleting the module
    attribute numpy 2 does not have, in a fresh process."""
    result = run_python(
        "import numpy as np\n"
        "del np.compat\n"
        "import fairseq_distilled_emb\n"
        "from fairseq.data import LanguagePairDataset, Dictionary\n"
        "import torch\n"
        "d = Dictionary(); [d.add_symbol(w) for w in 'a b c'.split()]\n"
        "items = [torch.tensor([4, 5, 2]), torch.tensor([6, 2])]\n"
        "ds = LanguagePairDataset(items, [3, 2], d, items, [3, 2], d, num_buckets=2)\n"
        "print(np.compat.long is int, ds.bucketed_num_tokens.tolist())"
    )
    assert result.stdout.splitlines()[-1] == "True [3, 2]", result.stdout + result.stderr[-2000:]
