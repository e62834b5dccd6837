"""The training summary a stage writes (``train.json``) from fairseq-train's own log lines."""

from examples.multi30k.stages import parse_train_log

# fairseq-train's lines, as printed by a run resumed after its best checkpoint (WikiText-2 cpu
# teacher, resumed at 2,304 updates, whose valid loss 7.07 stayed the best)
RESUMED_AFTER_BEST = """\
2026-12-04 16:25:10 | INFO | fairseq_cli.train | num. shared model params: 10,099,712 (num. trained: 10,099,712)
2026-12-04 16:39:03 | INFO | valid | epoch 010 | valid on 'valid' subset | loss 7.099 | ppl 137.07 | wps 3933 | wpb 8032.5 | bsz 31.4 | num_updates 2432 | best_loss 7.07
2026-12-04 16:52:32 | INFO | valid | epoch 011 | valid on 'valid' subset | loss 7.102 | ppl 137.39 | wps 3835 | wpb 8032.5 | bsz 31.4 | num_updates 2560 | best_loss 7.07
2026-12-04 17:19:39 | INFO | valid | epoch 012 | valid on 'valid' subset | loss 7.104 | ppl 137.56 | wps 4082.3 | wpb 8032.5 | bsz 31.4 | num_updates 2816 | best_loss 7.07
2026-12-04 17:19:40 | INFO | train | epoch 012 | loss 5.444 | ppl 43.54 | wps 769.8 | ups 0.09 | wpb 8192 | bsz 32 | num_updates 2816 | lr 0.000595914 | gnorm 0.518 | train_wall 63 | wall 0
"""


def test_a_resumed_run_keeps_the_checkpoints_best_valid_loss_not_its_own_lowest():
    assert parse_train_log(RESUMED_AFTER_BEST) == {
        "total_params": 10099712, "best_valid_loss": 7.07, "train_wps": 769.8, "updates": 2816}


def test_without_fairseqs_best_loss_field_the_lowest_printed_valid_loss_is_kept():
    lines = RESUMED_AFTER_BEST.replace(" | best_loss 7.07", "")
    assert parse_train_log(lines)["best_valid_loss"] == 7.099
