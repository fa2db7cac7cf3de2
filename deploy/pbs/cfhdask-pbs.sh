#!/bin/bash
# PBS Pro / OpenPBS: one allocation running a Dask scheduler (first node),
# WORKERS_PER_NODE Dask workers on every node, and `cfhdask run` attached to them.
#   qsub -v STUDY=study.yaml deploy/pbs/cfhdask-pbs.sh
# Not run in cfhdask's tests (no PBS server there); it mirrors
# deploy/slurm/cfhdask-slurm.sbatch, which is. Per node: WORKERS_PER_NODE workers
# of ncpus / WORKERS_PER_NODE threads; CFHDASK_INTERFACE=ib0 picks the network.
#PBS -N cfhdask
#PBS -l select=4:ncpus=16:mem=64gb
#PBS -l walltime=04:00:00
#PBS -j oe
set -euo pipefail
cd "$PBS_O_WORKDIR"
STUDY=${STUDY:?qsub -v STUDY=study.yaml}
SCHED_FILE=$PBS_O_WORKDIR/scheduler-${PBS_JOBID}.json
WORKERS_PER_NODE=${WORKERS_PER_NODE:-4}
THREADS=$(( ${NCPUS:-16} / WORKERS_PER_NODE ))
WORKER_MEM=${WORKER_MEM:-auto}              # per worker, e.g. 14GiB; auto: node memory / workers
WAIT_SCHEDULER=${CFHDASK_WAIT_SCHEDULER:-300}
IFACE=(${CFHDASK_INTERFACE:+--interface "$CFHDASK_INTERFACE"})
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -f "$SCHED_FILE"' EXIT

dask scheduler --scheduler-file "$SCHED_FILE" --port 0 --dashboard-address :0 "${IFACE[@]}" &
PIDS+=($!)
for _ in $(seq "$WAIT_SCHEDULER"); do [ -s "$SCHED_FILE" ] && break; sleep 1; done
[ -s "$SCHED_FILE" ] || { echo "cfhdask-pbs: no scheduler after ${WAIT_SCHEDULER} s" >&2; exit 1; }

NODES=$(sort -u "$PBS_NODEFILE")
# workers keep glibc's default malloc trimming (cfhdask.cluster.malloc-trim-threshold: null),
# as the embedded cluster: Dask's 65536 page-faults every large temporary
for node in $NODES; do
  pbs_tmrsh "$node" bash -lc "cd '$PBS_O_WORKDIR' && \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{\"MALLOC_TRIM_THRESHOLD_\": None}' \
    dask worker --scheduler-file '$SCHED_FILE' --nworkers $WORKERS_PER_NODE \
      --nthreads $THREADS --memory-limit $WORKER_MEM --local-directory \${TMPDIR:-/tmp} \
      ${IFACE[*]}" &
  PIDS+=($!)
done

# The client starts once every worker has joined (or stops with an error after
# cfhdask.cluster.wait_timeout); finished subjects are kept, re-submitting resumes.
cfhdask run "$STUDY" --scheduler-file "$SCHED_FILE" \
  --wait-workers $(( $(echo "$NODES" | wc -l) * WORKERS_PER_NODE ))
