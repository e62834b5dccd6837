#!/usr/bin/env bash
# One GPU call, everything the CPU cannot afford, side by side on one card (these models are
# small: a card has room for many fairseq-train processes at once, so the recipe's --jobs runs
# up to N stages together):
#   1. the full profile (teacher to early stopping, then its students and the dense family);
#   2. the cpu profile's teacher and its dense rows in fp32 (the cpu profile's own commands,
#      --device gpu --no-fp16), so the CPU benchmark can seed them and spend its hours on students;
#   3. as soon as that teacher exists, the cpu shape's fine-tuning schedule swept on valid (fp32).
# Resumable like the recipe: run it again and every finished stage is skipped.
#
#   bash benchmarks/gpu_batch.sh OUT_DIR SECONDS [DATA_DIR]
#
# DATA_DIR (default .carry): a prepared results directory's data/ and data-bin/ (prepared on
# the CPU machine by the recipe's prepare stage), copied in where a results directory lacks them.
# SECONDS: the wall-clock budget; every job is stopped then and what finished is packed into
# OUT_DIR (results.tar.gz; the cpu teacher's and dense rows' fp16 exports beside it).
# A dry run of this script's plumbing on a CPU machine (minutes, meaningless scores):
#   FULL=/tmp/b/full CPU=/tmp/b/cpu FULL_PROFILE=ci CPU_PROFILE=ci DEVICE=cpu UPDATES=6 \
#   SHORT=4 LONG=6 FULL_ROWS="distilled_8x dense_8x" CPU_ROWS=dense_8x bash benchmarks/gpu_batch.sh /tmp/b/out 600 results/multi30k-ci
set -u
OUT=$1
BUDGET=$2
DATA=${3:-.carry}
FULL=${FULL:-results/multi30k-full}
CPU=${CPU:-results/multi30k-cpu}
FULL_PROFILE=${FULL_PROFILE:-full}
CPU_PROFILE=${CPU_PROFILE:-cpu}
DEVICE=${DEVICE:-gpu}
UPDATES=${UPDATES:-1000}  # the full profile's student budget (1,000: what fits the call)
SHORT=${SHORT:-250}       # the two budgets the cpu shape's sweep compares
LONG=${LONG:-500}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
started=$SECONDS
left() { echo $((BUDGET - (SECONDS - started))); }

for results in $FULL $CPU; do
    if [ ! -e $results/data-bin/preprocess.done ]; then
        mkdir -p $results && cp -r $DATA/data $DATA/data-bin $results/
    fi
done

FULL_ROWS=${FULL_ROWS:-"distilled_8x distilled_16x distilled_output_kd_8x svd_linear_8x svd_linear_16x
           tensor_train_16x distilled_4x teacher_continued dense_4x dense_8x dense_16x"}
CPU_ROWS=${CPU_ROWS:-"dense_4x dense_8x dense_16x"}
timeout $(left) python3 -m examples.multi30k.run --profile $FULL_PROFILE --device $DEVICE \
    --results $FULL --student-updates $UPDATES --jobs 12 --rows $FULL_ROWS > $OUT/full.log 2>&1 &
timeout $(left) python3 -m examples.multi30k.run --profile $CPU_PROFILE --device $DEVICE --no-fp16 \
    --results $CPU --jobs 4 --rows $CPU_ROWS > $OUT/cpu.log 2>&1 &
CPU_RUN=$!

# the cpu shape's schedule on valid: its teacher's valid score first (one process), then one
# process per point (each point is its own resumable stage)
sweep() { timeout $(left) python3 -m benchmarks.schedule_sweep --results $CPU \
              --profile $CPU_PROFILE --device $DEVICE --no-fp16 --scheduler cosine --warmup 50 "$@"; }
(
    while [ ! -e $CPU/teacher/train.json ] && kill -0 $CPU_RUN 2>/dev/null \
          && [ $(left) -gt 60 ]; do sleep 5; done
    [ -e $CPU/teacher/train.json ] || exit
    sweep --rows distilled_8x --lr 1.5e-3 --updates $LONG > $OUT/sweep.log 2>&1 &
    first=$!
    while [ ! -e $CPU/teacher/eval.valid.json ] && kill -0 $first 2>/dev/null \
          && [ $(left) -gt 60 ]; do sleep 2; done
    [ -e $CPU/teacher/eval.valid.json ] || exit
    for point in "distilled_8x --lr 1.5e-3 --updates $SHORT" "distilled_8x --lr 3e-3 --updates $SHORT" \
                 "distilled_8x --lr 3e-3 --updates $LONG" "distilled_16x --lr 1.5e-3 --updates $LONG" \
                 "distilled_16x --lr 3e-3 --updates $LONG"; do
        sweep --rows $point >> $OUT/sweep.log 2>&1 &
    done
    wait
) &
wait
echo "jobs ended after $((SECONDS - started)) s"

cp $CPU/teacher/exported_fp16.pt $OUT/cpu_teacher_fp16.pt 2>/dev/null
for row in $CPU_ROWS; do
    cp $CPU/rows/$row/exported_fp16.pt $OUT/cpu_${row}_fp16.pt 2>/dev/null
done
tar czf $OUT/results.tar.gz --exclude='*.pt' --exclude='data' --exclude='data-bin' $FULL $CPU \
    $OUT/*.log && rm $OUT/*.log
cat $FULL/results.md $CPU/results.md $CPU/sweep/sweep.md 2>/dev/null
ls -la $OUT
