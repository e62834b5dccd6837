"""End to end through the stock fairseq console scripts (train, generate, interactive) with
``--user-dir fairseq_distilled_emb``, on the session's data-bin and tiny checkpoints."""

import re

import pytest

import helpers
from helpers import (
    PLUGIN_DIR,
    combined_output,
    hypotheses,
    parse_log_stats,
    run_fairseq,
    without_timing,
)

SUMMARY = re.compile(
    r"factorized embedding: V=(?P<V>\d+) d=(?P<d>\d+) rank=(?P<r>\d+) \| "
    r"dense embedding params (?P<dense>[\d,]+) \| factorized params (?P<fact>[\d,]+) \| "
    r"ratio (?P<ratio>[\d.]+)x \| total model params (?P<total>[\d,]+)"
)


def as_int(text):
    return int(text.replace(",", ""))


# ----------------------------------------------------------------------------- fairseq-train


def test_training_logs_one_parameter_summary_line(tiny_student_checkpoint):
    log = tiny_student_checkpoint.log
    lines = [line for line in log.splitlines() if "factorized embedding:" in line]
    assert len(lines) == 1, lines  # one shared embedding -> one line
    for words in ("dense embedding params", "ratio", "total model params"):
        assert words in lines[0]
    match = SUMMARY.search(lines[0])
    assert match, lines[0]
    vocab, dim, rank = as_int(match["V"]), as_int(match["d"]), as_int(match["r"])
    assert dim == 64
    assert as_int(match["dense"]) == vocab * dim
    assert as_int(match["fact"]) == rank * (vocab + dim)
    assert float(match["ratio"]) == pytest.approx(vocab * dim / (rank * (vocab + dim)), abs=0.01)
    assert float(match["ratio"]) >= 4.0  # --embedding-compression 4
    # the total agrees with fairseq's own count
    shared = re.search(r"num\. shared model params: ([\d,]+)", log)
    assert shared and as_int(shared.group(1)) == as_int(match["total"])


def test_training_loss_decreases(tiny_student_checkpoint):
    rows = parse_log_stats(tiny_student_checkpoint.log, "train_inner")
    assert len(rows) == 8, rows  # 40 updates, --log-interval 5
    assert [int(r["num_updates"]) for r in rows] == list(range(5, 41, 5))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.2, losses
    valid = parse_log_stats(tiny_student_checkpoint.log, "valid")
    assert valid and float(valid[-1]["loss"]) < losses[0]


def test_training_saves_checkpoints(tiny_student_checkpoint):
    assert tiny_student_checkpoint.best.stat().st_size > 0
    assert tiny_student_checkpoint.last.exists()
    assert not list(tiny_student_checkpoint.save_dir.glob("checkpoint[0-9]*.pt"))  # no epoch ckpts


# ----------------------------------------------------------------------------- fairseq-generate


def generate(data_bin, checkpoint, beam, *extra):
    return run_fairseq(
        "generate", data_bin, "--user-dir", PLUGIN_DIR, "--path", checkpoint,
        "--gen-subset", "test", "--beam", str(beam), "--batch-size", "32", "--cpu",
        "--max-len-b", "30", *extra, timeout=600,
    )


@pytest.fixture(scope="module")
def generated_beam5(data_bin, tiny_student_checkpoint):
    return generate(data_bin, tiny_student_checkpoint.best, 5)


def test_generate_translates_every_test_sentence(generated_beam5, spm_corpus):
    output = generated_beam5.stdout
    n_test = len(spm_corpus.lines("test", "de"))
    hyps = hypotheses(output)
    assert len([line for line in output.splitlines() if line.startswith("H-")]) == n_test
    assert sorted(hyps) == list(range(n_test)), "fairseq-generate dropped or duplicated sentences"
    assert sum(1 for h in hyps.values() if h.strip()) > n_test // 2  # mostly non-empty
    # each hypothesis is at most --max-len-b 30 tokens
    assert max(len(h.split()) for h in hyps.values()) <= 30
    # S-/T- lines are aligned with the ids
    sources = {int(l.split("\t")[0][2:]) for l in output.splitlines() if l.startswith("S-")}
    targets = {int(l.split("\t")[0][2:]) for l in output.splitlines() if l.startswith("T-")}
    assert sources == targets == set(range(n_test))


def test_generate_reports_bleu(generated_beam5):
    output = combined_output(generated_beam5)
    match = re.search(r"Generate test with beam=5: BLEU4? = ([\d.]+)", output)
    assert match, output[-2000:]
    assert 0.0 <= float(match.group(1)) <= 100.0


@pytest.fixture(scope="module")
def generated_beam1(data_bin, tiny_student_checkpoint):
    return generate(data_bin, tiny_student_checkpoint.best, 1)


def test_generate_beam1_and_beam5_both_work(generated_beam1, generated_beam5, spm_corpus):
    n_test = len(spm_corpus.lines("test", "de"))
    greedy, beam = hypotheses(generated_beam1.stdout), hypotheses(generated_beam5.stdout)
    assert sorted(greedy) == sorted(beam) == list(range(n_test))
    bleu = re.compile(r"Generate test with beam=1: BLEU4? = [\d.]+")
    assert bleu.search(combined_output(generated_beam1))
    assert greedy != beam  # beam search explores more than the greedy path


def test_generate_greedy_equals_full_forward_argmax(
    generated_beam1, tiny_student_checkpoint, spm_corpus
):
    """fairseq-generate decodes incrementally (cached keys/values, one step at a time); greedy
    decoding with a full forward pass over the whole prefix at every step gives the same tokens."""
    import torch
    from fairseq import checkpoint_utils

    import fairseq_distilled_emb  # noqa: F401

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tiny_student_checkpoint.best)]
    )
    model = models[0].eval()
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    greedy_cli = hypotheses(generated_beam1.stdout)
    max_len = 30  # --max-len-b 30, --max-len-a 0
    for index, line in enumerate(spm_corpus.lines("test", "de")[:6]):
        src = src_dict.encode_line(line, add_if_not_exist=False).long().unsqueeze(0)
        with torch.no_grad():
            encoder_out = model.encoder(src, src_lengths=torch.tensor([src.size(1)]))
            prev = torch.tensor([[tgt_dict.eos()]])
            tokens = []
            for step in range(max_len + 1):
                logits, _ = model.decoder(prev, encoder_out=encoder_out)
                lprobs = torch.log_softmax(logits[0, -1].float(), dim=-1)
                lprobs[tgt_dict.pad()] = -float("inf")
                if step < 1:  # --min-len 1
                    lprobs[tgt_dict.eos()] = -float("inf")
                token = tgt_dict.eos() if step == max_len else int(lprobs.argmax())
                if token == tgt_dict.eos():
                    break
                tokens.append(token)
                prev = torch.cat([prev, torch.tensor([[token]])], dim=1)
        assert greedy_cli[index] == tgt_dict.string(torch.tensor(tokens)), index


# ----------------------------------------------------------------------------- fairseq-interactive


def test_interactive_translates_stdin(data_bin, tiny_student_checkpoint, spm_corpus):
    source = spm_corpus.lines("test", "de")[:2]
    result = run_fairseq(
        "interactive", data_bin, "--user-dir", PLUGIN_DIR,
        "--path", tiny_student_checkpoint.best, "--source-lang", "de", "--target-lang", "en",
        "--beam", "5", "--cpu", "--max-len-b", "30",
        input="\n".join(source) + "\n", timeout=300,
    )
    hyps = hypotheses(result.stdout)
    assert sorted(hyps) == [0, 1], result.stdout[-2000:]
    assert len([line for line in result.stdout.splitlines() if line.startswith("H-")]) == 2
    echoed = [line for line in result.stdout.splitlines() if line.startswith("S-")]
    assert len(echoed) == 2


# ----------------------------------------------------------------------------- no side effects


def test_plugin_import_leaves_stock_dense_training_unchanged(
    data_bin, tiny_dense_checkpoint, tmp_path
):
    """Same stock transformer_tiny run, with and without --user-dir: identical losses."""
    args = helpers.dense_transformer_tiny_train_args(data_bin, tmp_path / "with-plugin")
    with_plugin = run_fairseq("train", *args, "--user-dir", PLUGIN_DIR, timeout=600)
    assert "factorized embedding:" not in with_plugin.stdout
    for tag in ("train_inner", "train", "valid"):
        stock = without_timing(parse_log_stats(tiny_dense_checkpoint.log, tag))
        plugin = without_timing(parse_log_stats(with_plugin.stdout, tag))
        assert stock, f"no {tag} lines in the stock run"
        assert plugin == stock, tag
    assert len(parse_log_stats(tiny_dense_checkpoint.log, "train_inner")) == 10
    shared = re.compile(r"num\. shared model params: ([\d,]+)")
    assert shared.search(with_plugin.stdout).group(1) == shared.search(
        tiny_dense_checkpoint.log
    ).group(1)
