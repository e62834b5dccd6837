#!/bin/bash
set -e
cd /work/main; source .venv/bin/activate
R=results/lm-wikitext2-cpu; S=/tmp/speed
TPID=$(pgrep -f "fairseq-train $PWD/$R/data-bin --save-dir $PWD/$R/teacher" | head -1)
echo "teacher pid $TPID"; kill -STOP $TPID; trap "kill -CONT $TPID" EXIT
python -m benchmarks.eval_lm_speed $R/data-bin $S/teacher.pt $S/s8/checkpoint_last.pt \
  --repeats 2 --ctranslate2 teacher=$S/teacher.pt distilled_8x=$S/s8/checkpoint_last.pt distilled_16x=$S/s16/checkpoint_last.pt \
  --work $S/ct2 --output $S/speed2.json 2>&1 | grep -v "INFO\|Warn\|warn\|^ \|^$"
