#!/usr/bin/env bash
# The cpu profile (d=256) by bytes, on 2 CPU cores (torch 2.13.0 CPU, ctranslate2 4.8.5).
# Each stage resumes (finished rows and points are skipped on a re-run).
set -euo pipefail
R=results/multi30k-cpu
B=$R/bytes
# 1. the teacher (12 epochs) and the students, with the profile's own schedules
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --rows distilled_8x distilled_8x_int3 distilled_16x \
    distilled_16x_int3_log8
# 2. every point by bytes: export, then decode valid (choices) and test (reported); the log8
#    points store each row's scale in 1 byte (--embedding-scale-format log8)
python -m benchmarks.bytes_frontier --results $R --profile cpu --factor-bits 8 6 4 3 2 \
    --int8-body teacher_int8 distilled_8x_ptq_int8 distilled_8x_ptq_int4 distilled_8x_int3_qat \
    --log8-scales distilled_16x_ptq_int3 distilled_16x_ptq_int4 distilled_8x_ptq_int3 \
    distilled_8x_ptq_int4 distilled_16x_ptq_int2 \
    --w-fp16 distilled_16x_ptq_int4_log8 distilled_16x_ptq_int3_log8 \
    --tail-bits distilled_16x_ptq_int4_log8_w16:3:5650
# (5650: the most int4 rows that fit 90x fewer bytes than fp32 E, 91,113 bytes, with fp16 W)
# 3. the deployment anchor: CTranslate2 int8 and float32 of the same teacher
python -m benchmarks.ctranslate2_anchor --results $R
# 4. decode speed, side by side in one run, nothing else on the cores
python -m benchmarks.decode_speed $R/data-bin $R/rows/distilled_8x/checkpoint_best.pt \
    $B/distilled_8x_ptq_int8/exported.pt $B/distilled_8x_ptq_int8_int8body/exported.pt \
    $B/distilled_8x_ptq_int4_int8body/exported.pt $R/teacher/checkpoint_best.pt \
    $B/teacher_int8_int8body/exported.pt --ctranslate2 $R/ctranslate2/teacher_int8 \
    --source $R/data/test.spm.de --repeats 2 --output $R/speed.json
