#!/usr/bin/env bash
# The same-size dense row (`--rows smaller_dim`, d=72 from scratch with the teacher's recipe) did
# not converge in one session. Its run is stopped (kill its process group: the stage resumes from
# checkpoint_last.pt the next time the recipe runs), and its best checkpoint so far is copied aside
# and scored with the recipe's fairseq-eval-lm flags, valid then test. The copy lies outside the
# row's directory, so the recipe's own eval.json is written only once the row has finished.
# Usage: score-smaller-dim-stopped.sh [DIR]  (DIR under results/lm-wikitext2-cpu/, default
# smaller-dim-stopped: the run stopped at 3,200 updates; smaller-dim-u5760: the resumed run)
set -euo pipefail
# from the repository root, with the environment the README installs active
R=results/lm-wikitext2-cpu
O=$R/${1:-smaller-dim-stopped}; mkdir -p $O
cp $R/rows/smaller_dim/checkpoint_best.pt $O/checkpoint_best.pt
grep "valid on 'valid'" $R/logs/smaller_dim.train.log > $O/valid-curve.log
: > $O/scores.log   # a rerun replaces the scores, not appends to them
for split in valid test; do
  fairseq-eval-lm $R/data-bin --user-dir fairseq_distilled_emb --path $O/checkpoint_best.pt \
    --gen-subset $split --max-tokens 8192 --sample-break-mode none --tokens-per-sample 256 \
    --softmax-batch 64 --context-window 128 --cpu 2>&1 | grep "Perplexity" | sed "s|^|$split: |" >> $O/scores.log
done
cat $O/scores.log
