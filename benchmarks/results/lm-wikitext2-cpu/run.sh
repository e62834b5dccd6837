#!/usr/bin/env bash
# WikiText-2 cpu profile (issue "Language modeling on WikiText-2"): every stage, in the order it
# runs. 2 CPU cores, one job at a time (the from-scratch rows may run elsewhere with their own
# --results). Every stage resumes: a finished one is skipped, a training stopped mid-way continues
# from its checkpoint_last.pt. Choices between rows are made on valid (each row is scored on both).
set -euo pipefail
R=results/lm-wikitext2-cpu
SHIPPED=examples/language_model/wikitext2_cpu_teacher
# the teacher this directory trained (fp32), or else the shipped one (its fp16 export), once packed
if [ -d $SHIPPED ] && [ ! -e $R/teacher/train.json ]; then TEACHER=(--shipped-teacher $SHIPPED)
else TEACHER=(--train-teacher); fi
RUN=(python -m examples.language_model.run --profile wikitext2-cpu --device cpu "${TEACHER[@]}")

# 0. the teacher, until valid stops improving (validated every 128 updates, patience 3: ~2,700
#    updates, ~4.5 h of 2 idle cores), scored on valid and test, and the lossless int8 row
"${RUN[@]}" --rows teacher_int8
# 1. packed, so that no later run has to train it again (then commit $SHIPPED)
[ -d $SHIPPED ] || python -m examples.language_model.shipped_teacher $R $SHIPPED

# 2. what each embedding costs before any training, on valid: the teacher with its E replaced by
#    the best uniform rank-r approximation (4x, 8x, 16x), or by K dense rows + a rank-r tail at the
#    same parameters (dense-head: 8x K=1000 r=24, K=2000 r=17; 16x K=500 r=12, K=1000 r=8)
python -m benchmarks.rank_ceiling --results $R --profile wikitext2-cpu --ranks 62 31 15
python -m benchmarks.rank_ceiling --results $R --profile wikitext2-cpu --dense-rows 1000 --ranks 24 8
python -m benchmarks.rank_ceiling --results $R --profile wikitext2-cpu --dense-rows 2000 --ranks 17
python -m benchmarks.rank_ceiling --results $R --profile wikitext2-cpu --dense-rows 500 --ranks 12

# 2b. the teacher's own E in int4/int3/int2 codes (no training, no choice to make: minutes each)
"${RUN[@]}" --rows teacher_int4 teacher_int3 teacher_int2

# 3a. the students' budget and output distillation, chosen on valid before the rows: the 8x
#    dense-head student that stage 2 ranks first (K=1000 here; K=2000 if stage 2 says so) with
#    300 or 900 fine-tuning updates (the uniform 8x student gained 17.9 valid ppl from 600
#    instead of 300), then output KD from the teacher's logits (alpha 0.5, T 2) at the better
#    budget. Chosen: 900 (valid 118.80 against 129.78), now the profile's own budget, which every
#    row below takes (teacher continued too)
SWEEP=(python -m benchmarks.schedule_sweep --recipe language_model --results $R
       --profile wikitext2-cpu --lr 1e-3 --scheduler cosine --warmup 50 --beta 0)
"${SWEEP[@]}" --rows distilled_8x_head1000 --updates 300 900
"${SWEEP[@]}" --rows distilled_8x_head1000 --updates 900 --kd-alpha 0.5 --kd-temperature 2
# 3. the rows the targets name: the students, their post-training codes
#    (900 updates: ~60-75 min each on 2 cores, the teacher continued about the same), then the
#    same-budget baselines. The 16x dense-head row was first trained at 300 updates, before the
#    choice: move rows/distilled_16x_head500* away (e.g. to rows-u300/) so that it is trained
#    again at 900
"${RUN[@]}" --rows distilled_8x distilled_16x \
    distilled_8x_ptq_int8 distilled_8x_ptq_int4 distilled_16x_ptq_int8 teacher_continued \
    distilled_8x_head1000 distilled_8x_head2000 distilled_16x_head500 distilled_16x_head1000 \
    distilled_8x_head1000_ptq_int8 distilled_8x_head1000_ptq_int4 distilled_8x_head2000_ptq_int8 \
    distilled_8x_head2000_ptq_int4 distilled_16x_head500_ptq_int8 distilled_16x_head500_ptq_int4 \
    distilled_16x_head1000_ptq_int8 distilled_16x_head1000_ptq_int4 \
    svd_linear_8x tensor_train_8x distilled_32x_head250 distilled_32x_head250_ptq_int8 \
    distilled_32x_head250_ptq_int4 distilled_4x_head2000 distilled_4x_head2000_ptq_int8 \
    distilled_4x_head2000_ptq_int4 distilled_4x distilled_32x

# 4. from scratch with the teacher's recipe (hours each; they need no teacher). smaller_dim ran
#    ~2.3 s an update on 2 idle cores and was still improving at 5,760 updates (3 h 42 min);
#    score-smaller-dim-stopped.sh scores a stopped run's best checkpoint so far
"${RUN[@]}" --rows adaptive_8x adaptive_16x adaptive_8x_ptq_int8 adaptive_8x_ptq_int4 \
    adaptive_16x_ptq_int8 adaptive_16x_ptq_int4 smaller_dim

# 5. the whole table
"${RUN[@]}"
