#!/bin/bash
# droneseg on OAR: multi-GPU, multi-node, resubmitted at the walltime. Submit from the repository root:
#   mkdir -p logs && oarsub -S ./scripts/cluster/oar.sh   (after editing DATA below or exporting it in ~/.bashrc)
# OAR starts this script on the first node only: it starts one droneseg per node (oarsh for the others); each
# finds its node rank, Lightning then starts one process per GPU on its node.
#OAR -n droneseg
#OAR -l /nodes=1/gpu=4,walltime=24:00:00
#OAR --checkpoint 600
#OAR -t idempotent
#OAR -O logs/%jobname%.%jobid%.out
#OAR -E logs/%jobname%.%jobid%.err

set -uo pipefail

CONFIG=${CONFIG:-full-gpu}
DATA=${DATA:?set DATA=/path/to/dataset}
# a resubmitted job has a new id but the same name: the run folder is named from the name, found again
RUN_DIR=${RUN_DIR:-runs/${OAR_JOB_NAME:-droneseg}}
VENV=${VENV:-.venv}
STAGE=${STAGE:-0}                   # 1: copy the dataset to node-local disk before training
LOCAL=${TMPDIR:-/tmp}

mapfile -t NODES < <(awk '!seen[$0]++' "$OAR_NODEFILE")   # one line per GPU: de-duplicated, in order
LINES=$(wc -l < "$OAR_NODEFILE")
GPUS=${GPUS:-$((LINES / ${#NODES[@]}))}
export MASTER_ADDR=${NODES[0]}
export MASTER_PORT=$((15000 + OAR_JOB_ID % 20000))
echo "job $OAR_JOB_ID ($OAR_JOB_NAME) on ${NODES[*]}: ${#NODES[@]} node(s) x $GPUS GPU(s), run $RUN_DIR"

ARGS=(-c "$CONFIG" --data "$DATA" --run-dir "$RUN_DIR" --devices "$GPUS" --num-nodes "${#NODES[@]}" "$@")
if [ "$STAGE" = 1 ]; then
    ARGS[3]=$LOCAL/droneseg-data
fi
PREFIX="cd '$PWD' && source '$VENV/bin/activate' && export DRONESEG_CACHE='$LOCAL/droneseg-cache'"
[ "$STAGE" = 1 ] && PREFIX="$PREFIX && rsync -a '$DATA/' '$LOCAL/droneseg-data/'"

remote=()
for rank in $(seq 1 $((${#NODES[@]} - 1))); do
    # oarsh passes no environment: the rendezvous and the node rank go on the command line
    oarsh "${NODES[$rank]}" "$PREFIX && OAR_JOB_ID=$OAR_JOB_ID MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT \
        NODE_RANK=$rank droneseg train ${ARGS[*]@Q}" &
    remote+=($!)
done

bash -c "$PREFIX && export NODE_RANK=0 && exec droneseg train ${ARGS[*]@Q}" &
main=$!
# OAR sends the checkpoint signal (SIGUSR2) to this script: hand it to droneseg, which saves and exits 99; the
# other nodes learn it from rank 0 at the next training step
trap 'kill -USR2 "$main" 2>/dev/null' USR2
wait "$main"
code=$?
while kill -0 "$main" 2>/dev/null; do   # the trap interrupted the wait: wait for the exit itself
    wait "$main"
    code=$?
done
for pid in "${remote[@]}"; do
    wait "$pid"
done
exit "$code"   # 99: OAR resubmits this idempotent job, which resumes $RUN_DIR
