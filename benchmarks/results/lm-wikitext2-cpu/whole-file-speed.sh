#!/usr/bin/env bash
# Speed of the whole files (whole-file.sh exports them first), side by side in one run on the
# same cores: stock fairseq-eval-lm tokens/s of the shipped teacher, its int8 file (E codes + int8
# body), the 4x and 16x dense-head students as trained (fp32) and as shipped (E codes + int8 body),
# stock adaptive input with the 16x student's embedding parameters (fp32), and CTranslate2 int8 of
# the whole teacher; test split, the recipe's blocks, 2 rounds in turns, best kept. Nothing else
# should run on the machine. Run from the repository root with the README's environment active.
set -euo pipefail
R=results/lm-wikitext2-cpu; O=$R/whole-file
python -m benchmarks.eval_lm_speed $R/data-bin \
  $R/teacher/checkpoint_best.pt $O/teacher_int8E_int8body.pt \
  $R/rows/distilled_4x_head2000/checkpoint_best.pt $O/distilled_4x_head2000_int8_int8body.pt \
  $R/rows/distilled_16x_head500/checkpoint_best.pt $O/distilled_16x_head500_int4_int8body.pt \
  $R/rows/adaptive_16x/checkpoint_best.pt \
  --subset test --repeats 2 --ctranslate2 teacher=$R/teacher/checkpoint_best.pt --work $O/ct2 \
  --output $O/speed-test.json
cat $O/speed-test.json
