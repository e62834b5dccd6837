#!/bin/bash
# Run 4: run 3's fairseq-eval-lm rows (--softmax-batch 64) beside CTranslate2 int8 of the teacher
# and of the 8x student (run 2's conversions), in one run, the background teacher paused, 1 round.
set -e
cd /work/main; source .venv/bin/activate
R=results/lm-wikitext2-cpu; S=/tmp/speed
bash /tmp/wt2sig.sh STOP; trap "bash /tmp/wt2sig.sh CONT" EXIT
python -m benchmarks.eval_lm_speed $R/data-bin $S/teacher.pt $S/s8/checkpoint_last.pt \
  --repeats 1 --ctranslate2 teacher=$S/teacher.pt distilled_8x=$S/s8/checkpoint_last.pt \
  --work $S/ct2 --output $S/speed4.json 2>&1 | grep "^|"
