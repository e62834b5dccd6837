#!/usr/bin/env bash
# Whole files on disk, WikiText-2 cpu profile: the dense-head students with their embedding in
# int8/int4 codes and every body Linear in int8 (`export --int8-body`), against the teacher's own
# int8 file (E codes + int8 body) and CTranslate2 int8 of the whole teacher. No training: the
# checkpoints are the stage 3 rows' (900 updates) and the shipped teacher. Valid then test, with
# the recipe's fairseq-eval-lm flags; CTranslate2 scores the same token stream in the same blocks
# (benchmarks/eval_lm_speed.py). Run from the repository root with the README's environment active.
set -euo pipefail
R=results/lm-wikitext2-cpu; O=$R/whole-file; mkdir -p $O
FLAGS="--max-tokens 8192 --sample-break-mode none --tokens-per-sample 256 --softmax-batch 64 --context-window 128 --cpu"
export_file() {  # checkpoint output export-flags...: exported once, reused by a rerun
  [ -f "$O/$2" ] || fairseq-distilled-emb export "$1" "$O/$2" "${@:3}"
}
export_file $R/teacher/checkpoint_best.pt teacher_int8E_int8body.pt --embedding-bits 8 --int8-body
for spec in "4x_head2000 8" "4x_head2000 4" "8x_head1000 8" "16x_head500 8" "16x_head500 4" "32x_head250 4"; do
  set -- $spec
  ckpt=$R/rows/distilled_$1/checkpoint_best.pt
  [ -f "$ckpt" ] && export_file "$ckpt" "distilled_$1_int$2_int8body.pt" --embedding-bits "$2" --int8-body
done
# stock adaptive input (16x): export refuses --int8-body for it, so its body is fp16
A=$R/rows/adaptive_16x/checkpoint_best.pt
[ -f $A ] && export_file $A adaptive_16x_int4_fp16.pt --embedding-bits 4 --fp16
: > $O/scores.log  # a rerun replaces the scores
for f in $O/*.pt; do
  echo "== $(basename "$f"): $(stat -c %s "$f") bytes" >> $O/scores.log
  for split in valid test; do
    fairseq-eval-lm $R/data-bin --user-dir fairseq_distilled_emb --path "$f" --gen-subset $split \
      $FLAGS 2>&1 | grep -o "Perplexity: [0-9.]*" | sed "s/^/$split: /" >> $O/scores.log
  done
done
for split in valid test; do
  python -m benchmarks.eval_lm_speed $R/data-bin $R/teacher/checkpoint_best.pt --subset $split \
    --repeats 1 --ctranslate2 teacher=$R/teacher/checkpoint_best.pt --work $O/ct2 \
    --output $O/ctranslate2-teacher-$split.json
done
cat $O/scores.log $O/ctranslate2-teacher-*.json
