#!/bin/bash
# Run 7: the shipped teacher against the trained dense-head students (8x at 900 updates, its int8
# codes, 16x at 300, since moved to rows-u300/ to be trained again at 900), test, every model in turns,
# 2 rounds, nothing else running on the 2 cores but a 5-second test run
cd "$(dirname "$0")/../../.."; source .venv/bin/activate   # the repository root
R=results/lm-wikitext2-cpu
python -m benchmarks.eval_lm_speed $R/data-bin $R/teacher/checkpoint_best.pt \
  $R/sweep/distilled_8x_head1000_lr0.001_cosine_w50_u900_b0_ef0_gold/checkpoint_best.pt \
  $R/probe-head1000-u900/int8.pt $R/rows-u300/distilled_16x_head500/checkpoint_best.pt \
  --subset test --repeats 2 \
  --sample-flags "--sample-break-mode none --tokens-per-sample 256 --context-window 128 --softmax-batch 64" \
  --output benchmarks/results/lm-wikitext2-cpu-speed/speed_run7.json
