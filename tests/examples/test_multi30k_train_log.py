"""The training summary a stage writes (``train.json``) from fairseq-train's own log lines."""

from examples.multi30k.train_log import parse_train_log, training_wall_seconds

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


def fairseq_run(start, end, resumed):
    """The first and last lines a fairseq-train run prints, fresh or resumed from the last
    checkpoint (the lines ``training_wall_seconds`` reads)."""
    loaded = ("Loaded checkpoint /r/rows/s/checkpoint_last.pt (epoch 2 @ 255 updates)" if resumed
              else "No existing checkpoint found /r/rows/s/checkpoint_last.pt")
    return (f"{start} | INFO | fairseq_cli.train | {{'_name': None}}\n"
            f"{start} | INFO | fairseq.trainer | {loaded}\n"
            f"{end} | INFO | train_inner | epoch 002:     50 / 255 loss=7.8, num_updates=305\n")


def run_again(text):
    return f"\n# run again 2026-12-05 11:39:39: fairseq-train data-bin --save-dir rows/s\n{text}"


def test_a_training_resumed_over_runs_counts_every_run_and_not_the_gaps_between_them():
    # 41 min 2 s, killed; resumed 10 min later for 25 min 3 s, across midnight
    log = (fairseq_run("2026-12-04 22:58:49", "2026-12-04 23:39:51", resumed=False)
           + run_again(fairseq_run("2026-12-04 23:50:00", "2026-12-05 00:15:03", resumed=True)))
    assert training_wall_seconds(log) == 2462 + 1503


def test_a_run_fine_tuned_from_a_checkpoint_starts_a_training():
    # teacher_continued: --finetune-from-model loads the teacher at 0 updates, a fresh training
    earlier = fairseq_run("2026-12-04 20:00:00", "2026-12-04 21:00:00", resumed=False)
    log = earlier + run_again(fairseq_run("2026-12-04 22:59:47", "2026-12-04 23:59:35", True)
                              .replace("checkpoint_last.pt (epoch 2 @ 255 updates)",
                                       "checkpoint_last.pt (epoch 10 @ 0 updates)"))
    assert training_wall_seconds(log) == 3588


def test_a_training_restarted_from_scratch_counts_only_the_restart():
    # the first run was killed before its first checkpoint, so the next one started over
    log = (fairseq_run("2026-12-05 07:40:20", "2026-12-05 09:07:00", resumed=False)
           + run_again(fairseq_run("2026-12-05 09:07:48", "2026-12-05 10:49:05", resumed=False))
           + run_again(fairseq_run("2026-12-05 11:00:00", "2026-12-05 11:00:30", resumed=True)))
    assert training_wall_seconds(log) == 6077 + 30
