"""A stock adaptive-input language model (fairseq's ``--adaptive-input`` with a tied adaptive
softmax, trained without the plugin) through ``export --embedding-bits``: its bands are stored as
integer codes once (the softmax's tied copies dropped), ``stats`` counts what is stored, and stock
``fairseq-eval-lm --user-dir`` scores the file exactly as the stock model holding the dequantized
tables; the bad inputs are one error line each and write nothing."""

import hashlib
import re

import pytest
import torch

from fairseq_distilled_emb.checkpoints import load_checkpoint
from fairseq_distilled_emb.quantization import dequantize_rows, quantize_rows
from helpers import PLUGIN_DIR, combined_output, run_distilled_emb, run_fairseq

CUTOFFS, FACTOR, DIM = (40, 120), 4, 64  # transformer_lm_gpt2_tiny: d=64 → band widths 64/16/4
WIDTHS = (64, 16, 4)
BANDS = [f"decoder.embed_tokens.embeddings.{band}.0" for band in range(3)]
TIED_COPIES = ("decoder.adaptive_softmax.head.word_proj.weight",
               "decoder.adaptive_softmax.tail.0.2.weight",
               "decoder.adaptive_softmax.tail.1.2.weight")
EVAL_LM = re.compile(r"Loss \(base 2\): [\d.]+, Perplexity: [\d.]+")
EXPORT = "fairseq-distilled-emb export: error: "


@pytest.fixture(scope="module")
def adaptive_lm(lm_data_bin, tmp_path_factory):
    """Stock fairseq (no --user-dir): adaptive input tied to an adaptive softmax, 6 updates."""
    save_dir = tmp_path_factory.mktemp("adaptive-lm")
    cutoffs = ",".join(map(str, CUTOFFS))
    run_fairseq(
        "train", lm_data_bin, "--task", "language_modeling", "--arch", "transformer_lm_gpt2_tiny",
        "--criterion", "adaptive_loss", "--ddp-backend", "legacy_ddp", "--adaptive-input",
        "--adaptive-input-factor", str(FACTOR), "--adaptive-input-cutoff", cutoffs,
        "--adaptive-softmax-cutoff", cutoffs, "--adaptive-softmax-factor", str(FACTOR),
        "--adaptive-softmax-dropout", "0", "--tie-adaptive-weights", "--tie-adaptive-proj",
        "--tokens-per-sample", "64", "--sample-break-mode", "eos", "--optimizer", "adam",
        "--lr", "5e-3", "--max-tokens", "2000", "--max-update", "6", "--cpu", "--seed", "1",
        "--num-workers", "0", "--no-epoch-checkpoints", "--save-dir", save_dir, timeout=300)
    return save_dir / "checkpoint_last.pt"


def eval_lm(data_bin, path, plugin=True):
    """The loss/perplexity line of stock fairseq-eval-lm on valid."""
    output = combined_output(run_fairseq(
        "eval-lm", data_bin, *(["--user-dir", PLUGIN_DIR] if plugin else []), "--path", path,
        "--gen-subset", "valid", "--max-tokens", "2000", "--tokens-per-sample", "64", "--cpu"))
    return EVAL_LM.findall(output)[-1]


def vocabulary(data_bin):
    return 4 + sum(1 for _ in open(data_bin / "dict.txt", encoding="utf-8"))


@pytest.mark.parametrize("bits", [8, 4])
def test_bands_are_stored_once_as_codes_and_score_as_their_dequantized_tables(
        lm_data_bin, adaptive_lm, tmp_path, bits):
    out = tmp_path / f"int{bits}.pt"
    result = run_distilled_emb("export", "--embedding-bits", str(bits), adaptive_lm, out)
    assert result.returncode == 0, result.stderr[-2000:]
    exported = torch.load(out, weights_only=True)
    model = exported["model"]
    vocab = vocabulary(lm_data_bin)
    rows = (CUTOFFS[0], CUTOFFS[1] - CUTOFFS[0], vocab - CUTOFFS[1])
    for prefix, count, width in zip(BANDS, rows, WIDTHS):
        assert prefix + ".weight" not in model
        assert model[prefix + ".codes"].dtype == torch.uint8
        assert tuple(model[prefix + ".codes"].shape) == (count, width * bits // 8)
    assert not set(TIED_COPIES) & set(model)
    assert exported["cfg"]["model"]["_name"] == "transformer_lm_int_codes"

    # stats: codes + fp16 scale and offset a row + the (3,) int64 shape per band, the float
    # projections (width → d) and the head's two cluster vectors, against a V×d fp32 E
    stored = (sum(count * (width * bits // 8 + 4) + 24 for count, width in zip(rows, WIDTHS))
              + 4 * (DIM * sum(WIDTHS) + 2 * DIM))
    stats = run_distilled_emb("stats", out)
    assert stats.returncode == 0, stats.stderr[-2000:]
    fewer = 4 * vocab * DIM / stored
    assert (f"embedding bytes        {stored:,} ({fewer:.1f}x fewer than fp32 E, "
            f"{fewer / 2:.1f}x fewer than fp16 E)") in stats.stdout.splitlines()
    assert (f"compressed             adaptive input, 3 bands of {'/'.join(map(str, rows))} words, "
            f"widths 64/16/4, in int{bits} codes") in stats.stdout.splitlines()

    # the stock model (no plugin) holding each band's dequantized codes scores the same
    state = load_checkpoint(adaptive_lm)
    for prefix, width in zip(BANDS, WIDTHS):
        table = state["model"][prefix + ".weight"]
        dequantized = dequantize_rows(quantize_rows(table, bits), bits, width)
        for key, value in list(state["model"].items()):
            if value is table:
                state["model"][key] = dequantized
    reference = tmp_path / "dequantized.pt"
    torch.save(state, reference)
    assert eval_lm(lm_data_bin, out) == eval_lm(lm_data_bin, reference, plugin=False)


def test_stats_counts_a_float_adaptive_input_as_fairseq_built_it(lm_data_bin, adaptive_lm):
    vocab = vocabulary(lm_data_bin)
    tables = CUTOFFS[0] * 64 + (CUTOFFS[1] - CUTOFFS[0]) * 16 + (vocab - CUTOFFS[1]) * 4
    params = tables + DIM * sum(WIDTHS) + 2 * DIM
    result = run_distilled_emb("stats", adaptive_lm)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = result.stdout.splitlines()
    assert f"embedding params       {params:,}" in stats
    assert f"embedding compression  {vocab * DIM / params:.2f}x" in stats


def test_a_file_with_the_tied_tables_saved_as_copies_exports_the_same_codes(
        adaptive_lm, tmp_path):
    """fairseq copies a GPU model's state tensor by tensor: the tables the adaptive softmax ties
    to arrive as separate copies, which the export must still store once."""
    state = load_checkpoint(adaptive_lm)
    state["model"] = {key: value.clone() for key, value in state["model"].items()}
    copies = tmp_path / "copies.pt"
    torch.save(state, copies)
    for name, source in (("direct.pt", adaptive_lm), ("from-copies.pt", copies)):
        result = run_distilled_emb("export", "--embedding-bits", "4", source, tmp_path / name)
        assert result.returncode == 0, result.stderr[-2000:]
    direct, from_copies = (torch.load(tmp_path / name, weights_only=True)["model"]
                           for name in ("direct.pt", "from-copies.pt"))
    assert sorted(direct) == sorted(from_copies)
    assert all(torch.equal(direct[key], from_copies[key]) for key in direct)


@pytest.mark.parametrize("flags, message", [
    (["--int8-body"], "--int8-body: an adaptive-input language model's layers stay float (the "
     "plugin's int8 layers are built by its distilled_* architectures only); drop --int8-body"),
    (["--dense"], "--dense: this is an adaptive-input language model, which has no one V×d "
     "embedding to write; export it without the flag (its bands in integer codes: "
     "--embedding-bits B)"),
    (["--project-in-out"], "--project-in-out: this is an adaptive-input language model, which "
     "has no one V×d embedding to write; export it without the flag (its bands in integer codes: "
     "--embedding-bits B)"),
])
def test_a_float_export_adaptive_input_cannot_take_is_one_error_line(
        adaptive_lm, tmp_path, flags, message):
    result = run_distilled_emb("export", *flags, adaptive_lm, tmp_path / "out.pt")
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [EXPORT + message])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--embedding-tail-bits", "3", "--embedding-head-rows", "10"],
     "--embedding-tail-bits: this checkpoint has adaptive input (fairseq's --adaptive-input), "
     "whose bands already give rarer words narrower rows and have no W; drop the flag"),
    (["--embedding-w-fp16"],
     "--embedding-w-fp16: this checkpoint has adaptive input (fairseq's --adaptive-input), whose "
     "bands already give rarer words narrower rows and have no W; drop the flag"),
    (["--int8-body"],
     "--int8-body: an adaptive-input language model's layers stay float (the plugin's int8 layers "
     "are built by its distilled_* architectures only); drop --int8-body"),
])
def test_a_flag_adaptive_input_cannot_take_is_one_error_line_and_writes_nothing(
        adaptive_lm, tmp_path, flags, message):
    before = hashlib.sha256(adaptive_lm.read_bytes()).hexdigest()
    result = run_distilled_emb("export", "--embedding-bits", "4", *flags, adaptive_lm,
                               tmp_path / "out.pt")
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [EXPORT + message])
    assert list(tmp_path.iterdir()) == []
    assert hashlib.sha256(adaptive_lm.read_bytes()).hexdigest() == before


def test_quantizing_the_codes_again_is_one_error_line(adaptive_lm, tmp_path):
    first = tmp_path / "int8.pt"
    assert run_distilled_emb("export", "--embedding-bits", "8", adaptive_lm, first).returncode == 0
    result = run_distilled_emb("export", "--embedding-bits", "4", first, tmp_path / "again.pt")
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [
        EXPORT + "--embedding-bits: this adaptive-input checkpoint's bands are already integer "
        "codes; quantize the training checkpoint it was exported from instead"])
    assert not (tmp_path / "again.pt").exists()


def test_an_adaptive_input_teacher_is_one_error_line(lm_data_bin, adaptive_lm, tmp_path):
    result = run_fairseq(
        "train", lm_data_bin, "--user-dir", PLUGIN_DIR,
        "--task", "language_modeling_reconstruction_init", "--teacher-path", adaptive_lm,
        "--arch", "distilled_transformer_lm_tiny", "--share-decoder-input-output-embed",
        "--embedding-compression", "4", "--criterion",
        "label_smoothed_cross_entropy_with_distillation", "--optimizer", "adam", "--lr", "1e-3",
        "--max-tokens", "2000", "--tokens-per-sample", "64", "--max-update", "1", "--cpu",
        "--save-dir", tmp_path / "save", check=False)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (1, (
        f"fairseq-train: error: --teacher-path {adaptive_lm} has adaptive input (fairseq's "
        "--adaptive-input): its bands are not one V×d embedding to factorize; pass a teacher "
        "with a tied dense embedding (--share-decoder-input-output-embed)"))
    assert not (tmp_path / "save").exists() or list((tmp_path / "save").iterdir()) == []
