#!/usr/bin/env bash
# the chosen (900-update) sweep point: test once, and its int8/int4 codes on valid and test
set -euo pipefail
# from the repository root, with the environment the README installs active
P=results/lm-wikitext2-cpu/sweep/distilled_8x_head1000_lr0.001_cosine_w50_u900_b0_ef0_gold
O=results/lm-wikitext2-cpu/probe-head1000-u900; mkdir -p $O
ev() { fairseq-eval-lm results/lm-wikitext2-cpu/data-bin --user-dir fairseq_distilled_emb --path $1 \
    --gen-subset $2 --max-tokens 8192 --sample-break-mode none --tokens-per-sample 256 \
    --softmax-batch 64 --context-window 128 --cpu 2>&1 | grep "Perplexity" | sed "s|^|$1 $2: |" >> $O/probe.log; }
ev $P/checkpoint_best.pt test
for b in 8 4; do
  fairseq-distilled-emb export $P/checkpoint_best.pt $O/int$b.pt --embedding-bits $b > $O/export$b.log 2>&1
  fairseq-distilled-emb stats $O/int$b.pt > $O/stats$b.txt 2>&1
  ev $O/int$b.pt valid; ev $O/int$b.pt test
done
echo PROBE DONE >> $O/probe.log
