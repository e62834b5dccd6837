#!/usr/bin/env bash
# The students of the *trained-on* teacher: the cpu profile's teacher continued for 500 updates
# (multi30k-cpu-bytes-baselines, 39.36) becomes the teacher, and every row starts from it. The
# reference at equal total updates is that teacher continued 500 more (1,620 + 1,000 updates),
# then quantized. 2 CPU cores (torch 2.13.0 CPU), one thread per process, two processes at a
# time. Needs multi30k-cpu-bytes-baselines/run.sh's stage 1 first. Each stage resumes.
set -euo pipefail
SRC=results/multi30k-cpu
R=results/multi30k-cpu-tc
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# a results directory of its own for a row given another budget (stages 6-8: the row's name is
# the same): the same data and dictionary, and stage 0's teacher
budget_dir() {
    mkdir -p "$1/teacher"
    for f in data data-bin; do ln -sfn "$(realpath $SRC/$f)" "$1/$f"; done
    for f in checkpoint_best.pt checkpoint_last.pt eval.json exported_fp16.pt test.hyp.en train.json; do
        cp -P --remove-destination "$R/teacher/$f" "$1/teacher/$f"
    done
}
# 0. the results directory: the same data and dictionary, the continued teacher as its teacher.
#    Its train.json keeps the first stage's settings (what the recipe checks a teacher against)
#    and records the continuation in "continued_from", with the updates and seconds of both.
mkdir -p $R/teacher $R/rows
for f in data data-bin; do ln -sfn "$(realpath $SRC/$f)" $R/$f; done
for f in checkpoint_best.pt checkpoint_last.pt eval.json exported_fp16.pt test.hyp.en; do
    ln -sfn "$(realpath $SRC/rows/teacher_continued/$f)" $R/teacher/$f
done
ln -sfn "$(realpath $SRC/rows/dense_8x)" $R/rows/dense_8x   # needs no teacher: the same row
[ -e $R/teacher/train.json ] || python - "$SRC" "$R" <<'PY'
import json, sys
src, out = sys.argv[1:]
first = json.load(open(f"{src}/teacher/train.json"))
more = json.load(open(f"{src}/rows/teacher_continued/train.json"))
first.update(updates=first["updates"] + more["updates"],
             train_seconds=round(first["train_seconds"] + more["train_seconds"], 1),
             best_valid_loss=more["best_valid_loss"],
             continued_from=f"{src}/teacher ({first['updates']} updates) + its teacher_continued "
                            f"row ({more['updates']} updates, {more['settings']['--lr-scheduler']} "
                            f"from {more['settings']['--lr']}); the settings are the first stage's")
json.dump(first, open(f"{out}/teacher/train.json", "w"), indent=2)
PY
# 1. the teacher continued 500 more and the 8x student (500 updates each), side by side
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --jobs 2 --rows teacher_continued distilled_8x
# 2. the 4x (500 updates) and 16x (1,000, the profile's budget from 16x on) students
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --jobs 2 --rows distilled_4x distilled_16x
# 3. every point by bytes (valid for choices, test reported), the 16x tail split chosen on valid.
#    (Run here as three invocations with parts of --points, two beside stage 2's training; the
#    points are the same files, and a finished point is skipped.)
FRONTIER=(--results $R --profile cpu --factor-bits 8 6 4 3 2
    --int8-body teacher_int4 teacher_int3 teacher_continued_int4 teacher_continued_int3
    distilled_8x_ptq_int8 distilled_8x_ptq_int4 distilled_4x_ptq_int8 distilled_4x_ptq_int4
    distilled_4x_ptq_int3_log8_w16
    --log8-scales distilled_8x_ptq_int4 distilled_8x_ptq_int3 distilled_4x_ptq_int4
    distilled_4x_ptq_int3 distilled_16x_ptq_int4 distilled_16x_ptq_int3
    --w-fp16 distilled_4x_ptq_int4_log8 distilled_4x_ptq_int3_log8 distilled_16x_ptq_int4_log8
    distilled_16x_ptq_int3_log8
    --tail-bits distilled_16x_ptq_int4_log8_w16:3:5650 distilled_16x_ptq_int4_log8_w16:3:4000
    distilled_16x_ptq_int4_log8_w16:3:3000
    --points teacher_fp16 teacher_int4 teacher_int3 teacher_int2
    teacher_continued teacher_continued_int4 teacher_continued_int3 teacher_continued_int2
    dense_8x dense_8x_int4 dense_8x_int3
    distilled_4x_fp32_factors distilled_4x_ptq_int8 distilled_4x_ptq_int6 distilled_4x_ptq_int4
    distilled_4x_ptq_int3 distilled_4x_ptq_int2 distilled_4x_ptq_int4_log8_w16
    distilled_4x_ptq_int3_log8_w16
    distilled_8x_fp32_factors distilled_8x_ptq_int8 distilled_8x_ptq_int6
    distilled_8x_ptq_int4 distilled_8x_ptq_int4_log8 distilled_8x_ptq_int3
    distilled_8x_ptq_int3_log8 distilled_8x_ptq_int2
    distilled_16x_fp32_factors distilled_16x_ptq_int8 distilled_16x_ptq_int4
    distilled_16x_ptq_int4_log8_w16 distilled_16x_ptq_int4_log8_w16_h5650t3
    distilled_16x_ptq_int4_log8_w16_h4000t3 distilled_16x_ptq_int4_log8_w16_h3000t3
    distilled_16x_ptq_int3_log8_w16
    teacher_int4_int8body teacher_int3_int8body teacher_continued_int4_int8body
    teacher_continued_int3_int8body distilled_8x_ptq_int8_int8body distilled_8x_ptq_int4_int8body
    distilled_4x_ptq_int8_int8body distilled_4x_ptq_int4_int8body
    distilled_4x_ptq_int3_log8_w16_int8body)
python -m benchmarks.bytes_frontier "${FRONTIER[@]}"
# 4. the deployment anchor: CTranslate2 int8 of the teacher continued 500 more
python -m benchmarks.ctranslate2_anchor --results $R --rows teacher_continued
# 5. decode speed, side by side in one run, nothing else on the cores (both threads)
unset OMP_NUM_THREADS MKL_NUM_THREADS
B=$R/bytes
python -m benchmarks.decode_speed $R/data-bin $R/rows/teacher_continued/checkpoint_best.pt \
    $R/rows/distilled_4x/checkpoint_best.pt $B/distilled_4x_ptq_int8_int8body/exported.pt \
    $B/distilled_4x_ptq_int4_int8body/exported.pt $B/teacher_continued_int4_int8body/exported.pt \
    --ctranslate2 $R/ctranslate2/teacher_continued_int8 --source $R/data/test.spm.de --repeats 2 \
    --output $R/speed.json
# 6. the 8x student given 1,000 updates (a results directory of its own: the row name is the
#    same), then its int3 and int4 (1-byte scales) f(U)
R2=results/multi30k-cpu-tc-u1000
budget_dir $R2
python -m examples.multi30k.run --profile cpu --device cpu --results $R2 \
    --data-dir ../shared/data/multi30k --rows distilled_8x --student-updates 1000
python -m benchmarks.bytes_frontier --results $R2 --profile cpu --factor-bits 4 3 \
    --log8-scales distilled_8x_ptq_int4 --points distilled_8x_ptq_int3 distilled_8x_ptq_int4_log8
# 7. the equal-updates reference for stage 6: the teacher trained on 1,000 more updates (the
#    1,000-update student's budget), and its E in codes
python -m examples.multi30k.run --profile cpu --device cpu --results $R2 \
    --data-dir ../shared/data/multi30k --rows teacher_continued --student-updates 1000
#    (stage 6's points again: bytes.md holds the points of the last call; finished ones are kept)
python -m benchmarks.bytes_frontier --results $R2 --profile cpu --teacher-bits 4 3 2 \
    --factor-bits 4 3 --log8-scales distilled_8x_ptq_int4 \
    --points teacher_continued teacher_continued_int4 teacher_continued_int3 teacher_continued_int2 \
    distilled_8x_fp32_factors distilled_8x_ptq_int3 distilled_8x_ptq_int4_log8
# 8. the 16x student given 2,000 updates (the >= 90x point), then its codes; the split and the
#    scales chosen on valid as in stage 3
R3=results/multi30k-cpu-tc-u2000
budget_dir $R3
python -m examples.multi30k.run --profile cpu --device cpu --results $R3 \
    --data-dir ../shared/data/multi30k --rows distilled_16x --student-updates 2000
python -m benchmarks.bytes_frontier --results $R3 --profile cpu --factor-bits 8 4 3 \
    --log8-scales distilled_16x_ptq_int4 distilled_16x_ptq_int3 \
    --w-fp16 distilled_16x_ptq_int4_log8 distilled_16x_ptq_int3_log8 \
    --tail-bits distilled_16x_ptq_int4_log8_w16:3:5650 distilled_16x_ptq_int4_log8_w16:3:4000 \
    --points distilled_16x_fp32_factors distilled_16x_ptq_int8 distilled_16x_ptq_int4 \
    distilled_16x_ptq_int4_log8_w16 distilled_16x_ptq_int4_log8_w16_h5650t3 \
    distilled_16x_ptq_int4_log8_w16_h4000t3 distilled_16x_ptq_int3_log8_w16
# 9. [C] dense-head at 8x: the 128 or 256 most frequent pieces' rows dense, f(U)*W of the largest
#    rank that fits the rest of the 8x budget (27 / 23); K chosen on valid. Then stage 3's call
#    again with their two points added (every other point is found done)
python -m examples.multi30k.run --profile cpu --device cpu --results $R \
    --data-dir ../shared/data/multi30k --jobs 2 --rows distilled_8x_head256 distilled_8x_head128
python -m benchmarks.bytes_frontier "${FRONTIER[@]}" distilled_8x_head256_fp32_factors \
    distilled_8x_head128_fp32_factors
# 10. [C] the dense-head students in integer codes (export --embedding-bits: the head's rows as E's
#     codes, the tail's f(U) as the uniform student's), beside the uniform 8x student's codes
python -m benchmarks.bytes_frontier "${FRONTIER[@]}" distilled_8x_head256_fp32_factors \
    distilled_8x_head128_fp32_factors distilled_8x_head128_ptq_int8 distilled_8x_head128_ptq_int4 \
    distilled_8x_head128_ptq_int3 distilled_8x_head256_ptq_int8 distilled_8x_head256_ptq_int4 \
    distilled_8x_head256_ptq_int3
