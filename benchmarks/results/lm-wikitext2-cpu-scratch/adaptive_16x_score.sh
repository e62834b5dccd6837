#!/bin/bash
# Scores adaptive_16x's checkpoint_best.pt as stored (fp32) and its bands in int8/int4 codes
# (fairseq-distilled-emb export --embedding-bits B; with --fp16 the band projections halved too),
# on valid and test, with the recipe's fairseq-eval-lm flags. Run from the repository root.
set -e
R=results/lm-wikitext2-cpu-scratch; B=$R/rows/adaptive_16x/checkpoint_best.pt; O=results/a16; mkdir -p $O
PY=.venv/bin/python
$PY -m fairseq_distilled_emb export $B $O/int8.pt --embedding-bits 8 --force
$PY -m fairseq_distilled_emb export $B $O/int4.pt --embedding-bits 4 --force
$PY -m fairseq_distilled_emb export $B $O/int4-fp16.pt --embedding-bits 4 --fp16 --force
for f in $B $O/int8.pt $O/int4.pt $O/int4-fp16.pt; do
  echo "== $f"; $PY -m fairseq_distilled_emb stats $f 2>/dev/null
  for s in valid test; do
    .venv/bin/fairseq-eval-lm $R/data-bin --user-dir fairseq_distilled_emb --path $f --gen-subset $s \
      --max-tokens 8192 --sample-break-mode none --tokens-per-sample 256 --softmax-batch 64 \
      --context-window 128 --cpu 2>&1 | grep -o "Evaluated.*\|Loss.*" | sed "s/^/$s: /"
  done
done
