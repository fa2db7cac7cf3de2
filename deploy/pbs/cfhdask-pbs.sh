#!/bin/bash
# PBS/Torque: scheduler on the mother-superior node, one dask worker per node.
#   qsub -v STUDY=study.yaml deploy/pbs/cfhdask-pbs.sh
#PBS -N cfhdask
#PBS -l select=4:ncpus=16:mem=64gb
#PBS -l walltime=04:00:00
#PBS -j oe
set -euo pipefail
cd "$PBS_O_WORKDIR"
SCHED_FILE=$PBS_O_WORKDIR/scheduler-${PBS_JOBID}.json
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
dask scheduler --scheduler-file "$SCHED_FILE" &
while [ ! -f "$SCHED_FILE" ]; do sleep 2; done
for node in $(sort -u "$PBS_NODEFILE"); do
  pbs_tmrsh "$node" bash -lc "cd $PBS_O_WORKDIR && dask worker --scheduler-file $SCHED_FILE --nworkers 4 --nthreads 4" &
done
sleep 10
cfhdask run "${STUDY:?qsub -v STUDY=study.yaml}" --scheduler-file "$SCHED_FILE"
