#!/bin/bash
# Run 3: the students' decoder leaves the logits to get_normalized_probs, so fairseq-eval-lm
# --softmax-batch 64 (the recipe's flag now) normalizes 64 positions at a time; every model gets
# the same flags. The same checkpoints as run 1/2 (speed does not depend on training), the
# background teacher paused, models timed in turns, 2 rounds, best kept. One run, test split.
set -e
cd /work/main; source .venv/bin/activate
R=results/lm-wikitext2-cpu; S=/tmp/speed
bash /tmp/wt2sig.sh STOP; trap "bash /tmp/wt2sig.sh CONT" EXIT
python -m benchmarks.eval_lm_speed $R/data-bin $S/teacher.pt $S/s8/checkpoint_last.pt \
  $S/s16/checkpoint_last.pt --repeats 2 --output $S/speed3.json 2>&1 | grep "^|"
