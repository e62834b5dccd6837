#!/usr/bin/env bash
# The cpu profile (d=256) by bytes, against the baselines a user tries first: the teacher's E in
# post-training codes, the teacher trained on for the student's 500 updates and then quantized
# (or converted by CTranslate2), and the same-size dense model with its E in codes. 2 CPU cores
# (torch 2.13.0 CPU, ctranslate2 4.8.5), one thread per process, two processes at a time. Each
# stage resumes (finished rows and points are skipped on a re-run).
set -euo pipefail
R=results/multi30k-cpu
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# 1. the teacher and the same-size dense model (12 epochs each, side by side), then the teacher
#    continued and the 8x student (500 updates each, side by side)
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --jobs 2 --rows teacher_continued dense_8x distilled_8x
# 2. the 16x and 32x students (1,000 updates each, the profile's budget from 16x on), side by side
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --jobs 2 --rows distilled_16x distilled_32x
# 3. every point by bytes: export, then decode valid (choices) and test (reported). The variants
#    are the ones multi30k-cpu-bytes chose on valid with the previous teacher (log8: 1-byte row
#    scales; w16: W in fp16; h5650t3: the rows from 5,650 on, the rarest words, in int3), not
#    tuned again here.
python -m benchmarks.bytes_frontier --results $R --profile cpu --factor-bits 8 6 4 3 2 \
    --int8-body teacher_int8 teacher_continued_int4 teacher_continued_int3 teacher_continued_int2 \
    distilled_8x_ptq_int8 distilled_8x_ptq_int4 \
    --log8-scales distilled_8x_ptq_int4 distilled_8x_ptq_int3 distilled_16x_ptq_int4 \
    distilled_16x_ptq_int3 \
    --w-fp16 distilled_16x_ptq_int4_log8 distilled_16x_ptq_int3_log8 \
    --tail-bits distilled_16x_ptq_int4_log8_w16:3:5650 \
    --points teacher_fp16 teacher_int8 teacher_int4 teacher_int3 teacher_int2 \
    teacher_continued teacher_continued_int4 teacher_continued_int3 teacher_continued_int2 \
    dense_8x dense_8x_int4 dense_8x_int3 dense_8x_int2 \
    distilled_8x_fp32_factors distilled_8x_ptq_int8 distilled_8x_ptq_int6 \
    distilled_8x_ptq_int4 distilled_8x_ptq_int4_log8 distilled_8x_ptq_int3 \
    distilled_8x_ptq_int3_log8 distilled_8x_ptq_int2 \
    distilled_16x_fp32_factors distilled_16x_ptq_int8 distilled_16x_ptq_int4 \
    distilled_16x_ptq_int4_log8_w16 distilled_16x_ptq_int4_log8_w16_h5650t3 \
    distilled_16x_ptq_int3_log8_w16 \
    distilled_32x_fp32_factors distilled_32x_ptq_int8 distilled_32x_ptq_int4 \
    teacher_int8_int8body teacher_continued_int4_int8body teacher_continued_int3_int8body \
    teacher_continued_int2_int8body distilled_8x_ptq_int8_int8body distilled_8x_ptq_int4_int8body
# 4. the deployment anchor: CTranslate2 int8 and float32 of the teacher and of the teacher
#    trained on
python -m benchmarks.ctranslate2_anchor --results $R --rows teacher_continued
# 5. decode speed, side by side in one run, nothing else on the cores (both threads)
unset OMP_NUM_THREADS MKL_NUM_THREADS
B=$R/bytes
python -m benchmarks.decode_speed $R/data-bin $R/rows/teacher_continued/checkpoint_best.pt \
    $B/teacher_continued_int4_int8body/exported.pt $R/rows/distilled_8x/checkpoint_best.pt \
    $B/distilled_8x_ptq_int8_int8body/exported.pt $B/distilled_8x_ptq_int4_int8body/exported.pt \
    --ctranslate2 $R/ctranslate2/teacher_continued_int8 --source $R/data/test.spm.de --repeats 2 \
    --output $R/speed.json
