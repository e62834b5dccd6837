#!/bin/bash
# Run 6: a second round of run 5 (16, 64) and 32, valid, one round each, teacher training paused
cd /work/main; source .venv/bin/activate
R=results/lm-wikitext2-cpu; S=/tmp/speed
bash /tmp/wt2sig.sh STOP; trap "bash /tmp/wt2sig.sh CONT" EXIT
for b in 16 32 64; do
python -m benchmarks.eval_lm_speed $R/data-bin $S/teacher.pt $S/s8/checkpoint_last.pt --subset valid --repeats 1 \
  --sample-flags "--sample-break-mode none --tokens-per-sample 256 --context-window 128 --softmax-batch $b" \
  --output $S/sbatch_r2_$b.json 2>&1 | grep "^|" | sed "s/^/sb=$b /"
done
