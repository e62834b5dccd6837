#!/usr/bin/env bash
# Run 8: fairseq-eval-lm speed of the 8x dense-head student (K=1,000 dense rows + rank 24, the 8x row's
# shape) side by side with the shipped teacher. Its 900-update checkpoint was lost, and speed does
# not depend on how far the weights are trained, so the student is built by the recipe's own
# fairseq-train command (reconstruction init from the teacher) stopped after 2 updates; its
# perplexity here is not a result. Test split, the recipe's blocks, 2 rounds in turns, best kept.
# Nothing else should run on the machine. Run from the repository root with the README's
# environment active.
set -euo pipefail
R=results/lm-wikitext2-cpu; O=$R/speed-8x; mkdir -p $O
[ -f $O/student/checkpoint_last.pt ] || fairseq-train $R/data-bin --save-dir $O/student \
  --user-dir fairseq_distilled_emb --task language_modeling_reconstruction_init \
  --teacher-path $R/teacher/checkpoint_best.pt --arch distilled_transformer_lm_gpt \
  --embedding-compression 8 --embedding-factorization dense-head --embedding-dense-rows 1000 \
  --criterion label_smoothed_cross_entropy_with_distillation --label-smoothing 0.0 \
  --embedding-distill-weight 0 --max-tokens 8192 --sample-break-mode none --tokens-per-sample 256 \
  --decoder-embed-dim 256 --decoder-ffn-embed-dim 1024 --decoder-layers 2 \
  --decoder-attention-heads 4 --share-decoder-input-output-embed --dropout 0.1 \
  --attention-dropout 0.1 --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 \
  --weight-decay 0.01 --no-epoch-checkpoints --log-format simple --seed 1 --lr 0.001 \
  --lr-scheduler fixed --max-update 2 --disable-validation \
  --cpu > $O/train.log 2>&1
python -m benchmarks.eval_lm_speed $R/data-bin $R/teacher/checkpoint_best.pt \
  $O/student/checkpoint_last.pt --subset test --repeats 2 \
  --output benchmarks/results/lm-wikitext2-cpu-speed/speed_run8.json
cat benchmarks/results/lm-wikitext2-cpu-speed/speed_run8.json
