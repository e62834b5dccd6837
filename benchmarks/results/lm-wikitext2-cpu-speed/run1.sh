#!/bin/bash
# Speed at the wikitext2-cpu shape, side by side, with the background teacher paused.
set -e
cd /work/main; source .venv/bin/activate
R=results/lm-wikitext2-cpu; S=/tmp/speed
TPID=$(pgrep -f "fairseq-train $PWD/$R/data-bin --save-dir $PWD/$R/teacher" | head -1)
echo "teacher pid $TPID"; kill -STOP $TPID; trap "kill -CONT $TPID" EXIT
cp $R/teacher/checkpoint_best.pt $S/teacher.pt
for ratio in 8 16; do
  [ -f $S/s$ratio/checkpoint_last.pt ] && continue
  FLAGS=$(python - $ratio <<'PY'
import sys, argparse, shlex
from pathlib import Path
from examples.language_model import run
from examples.language_model.profiles import PROFILES
args = argparse.Namespace(use_gpu=False, fp16=False)
flags = run.student_flags(f"distilled_{sys.argv[1]}x", PROFILES["wikitext2-cpu"], args, Path("/tmp/speed/teacher.pt"))
flags = run.merge_flags(flags, ["--max-update", "2", "--log-interval", "1"])
print(shlex.join(flags))
PY
)
  eval fairseq-train $R/data-bin --save-dir $S/s$ratio $FLAGS > $S/s$ratio.log 2>&1
done
python -m fairseq_distilled_emb export $S/teacher.pt $S/teacher_int4.pt --embedding-bits 4 --force > /dev/null 2>&1 || true
python -m benchmarks.eval_lm_speed $R/data-bin $S/teacher.pt $S/s8/checkpoint_last.pt $S/s16/checkpoint_last.pt $S/teacher_int4.pt \
  --repeats 2 --ctranslate2 teacher=$S/teacher.pt distilled_8x=$S/s8/checkpoint_last.pt distilled_16x=$S/s16/checkpoint_last.pt \
  --work $S/ct2 --output $S/speed.json 2>&1 | grep -v "INFO\|Warn\|warn\|^ \|^$"
