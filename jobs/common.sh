# jobs/common.sh: shared by the Slurm batch scripts in jobs/ (sourced, not run). See docs/slurm.md.
#
# What it does for a job script that calls `radmm_run ARGS...`:
#   - activates the Python environment $VENV (default: <repository>/.venv, built by
#     scripts/setup-env.sh); mpirun/mpiexec and python come from it (pip MPICH);
#   - runs `mpirun -n $SLURM_NTASKS python -m radmm_hpc ARGS --run-dir $RUN_DIR --resume auto
#     --set train.world_size=$SLURM_NTASKS` in the background and waits for it;
#     RUN_DIR = $RUNS/slurm-$SLURM_JOB_ID, or $RUNS/slurm-<array job id>_<task id> for a job array
#     task (stable across requeues, so a requeued job resumes from the newest good checkpoint of its
#     own run directory);
#   - traps USR1 (sent by `#SBATCH --signal=B:USR1@...` or `scancel --signal=USR1 --batch`), USR2
#     (submitit's preemption signal) and TERM in the batch shell and forwards them to the launcher
#     (USR2 as USR1), which forwards them to every rank; the ranks agree, write a checkpoint and exit
#     with status 3 (the ranks handle USR1, USR2 and TERM alike when they get them directly);
#   - on status 3 after USR1/USR2 runs `scontrol requeue` on this job (the job needs
#     `#SBATCH --requeue`): $SLURM_JOB_ID, or `<array job id>_<task id>` for an array task, so that
#     one task never requeues the whole array; the job goes back to the queue and continues where it
#     stopped; at most $MAX_RESTARTS times.
#     After TERM (scancel, time limit, node shutdown) it checkpoints but does not requeue: requeueing
#     would undo a user's scancel.
#
# Variables (set them in the job script before sourcing this file, or in the environment that
# sbatch exports to the job):
#   RADMM_HOME    repository root (default: $SLURM_SUBMIT_DIR, i.e. submit from the repository root)
#   VENV          Python environment to activate (default: $RADMM_HOME/.venv; "" = use PATH as is)
#   RUNS          parent of the run directories (default: $SLURM_SUBMIT_DIR/runs)
#   RUN_DIR       the run directory (default: $RUNS/slurm-$SLURM_JOB_ID; array tasks:
#                 $RUNS/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})
#   LAUNCHER      "mpirun" (default: mpirun -n $SLURM_NTASKS from $VENV) or "srun" (needs an MPI
#                 built with Slurm's PMI, see docs/slurm.md)
#   MPIRUN_FLAGS  extra launcher flags (e.g. "-launcher fork" for hydra on one node)
#   MAX_RESTARTS  requeue at most this many times (default 50); then exit 3 and stay finished
#   OMP_NUM_THREADS threads per rank (default: $SLURM_CPUS_PER_TASK, else 1; the application
#                 itself also takes SLURM_CPUS_PER_TASK when OMP_NUM_THREADS is unset)

_radmm_log() { echo "[radmm-job $(date '+%F %T')] $*" >&2; }

RADMM_HOME=${RADMM_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
VENV=${VENV-$RADMM_HOME/.venv}
RUNS=${RUNS:-${SLURM_SUBMIT_DIR:-$PWD}/runs}
# this job as scontrol names it: an array task is <array job id>_<task id> (its plain job id
# would name the whole array for the task that carries the array's id)
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    RADMM_JOB=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    RADMM_JOB=${SLURM_JOB_ID:-interactive}
fi
RUN_DIR=${RUN_DIR:-$RUNS/slurm-$RADMM_JOB}
LAUNCHER=${LAUNCHER:-mpirun}
MPIRUN_FLAGS=${MPIRUN_FLAGS:-}
MAX_RESTARTS=${MAX_RESTARTS:-50}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1

if [ -n "$VENV" ]; then
    if [ ! -f "$VENV/bin/activate" ]; then
        _radmm_log "error: no Python environment at VENV=$VENV (run scripts/setup-env.sh, or set VENV)"
        exit 2
    fi
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
fi

_RADMM_PID=
_RADMM_TERM=   # set when the batch shell got SIGTERM: scancel, time limit, node shutdown: no requeue
_radmm_forward() {   # $1 = signal received, $2 = signal sent on; the launcher forwards it to every rank
    [ "$1" = TERM ] && _RADMM_TERM=1
    _radmm_log "received SIG$1: forwarding SIG$2 to the launcher (pid ${_RADMM_PID:-none}); the ranks checkpoint and exit 3"
    [ -n "$_RADMM_PID" ] && kill "-$2" "$_RADMM_PID" 2>/dev/null
}

# radmm_run ARGS...: train with ARGS (any `python -m radmm_hpc train` flags). Never returns: exits
# the batch script with the application's status (0 after a successful requeue).
radmm_run() {
    local ntasks=${SLURM_NTASKS:?radmm_run: SLURM_NTASKS is not set (run this under sbatch)}
    mkdir -p "$RUN_DIR"
    _radmm_log "job $RADMM_JOB restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}:" \
        "$ntasks ranks, $OMP_NUM_THREADS thread(s) each, run dir $RUN_DIR, python $(command -v python)"
    local cmd
    case "$LAUNCHER" in
        mpirun) cmd=(mpirun -n "$ntasks") ;;
        srun) cmd=(srun) ;;   # no --kill-on-bad-exit: all ranks exit 3 together after a checkpoint
        *) _radmm_log "error: LAUNCHER=$LAUNCHER (want mpirun or srun)"; exit 2 ;;
    esac
    # shellcheck disable=SC2206
    cmd+=($MPIRUN_FLAGS python -m radmm_hpc train "$@" --run-dir "$RUN_DIR" --resume auto
          --set "train.world_size=$ntasks")
    # USR2 goes on as USR1, which every launcher forwards (the ranks treat both alike)
    trap '_radmm_forward USR1 USR1' USR1
    trap '_radmm_forward USR2 USR1' USR2
    trap '_radmm_forward TERM TERM' TERM
    _radmm_log "${cmd[*]}"
    "${cmd[@]}" &
    _RADMM_PID=$!
    local status
    # a trapped signal interrupts `wait` (status > 128 while the launcher still runs): wait again
    # until the launcher has exited; bash keeps an exited child's status for a later `wait PID`
    while :; do
        wait "$_RADMM_PID"
        status=$?
        if [ "$status" -gt 128 ] && kill -0 "$_RADMM_PID" 2>/dev/null; then
            continue
        fi
        break
    done
    if [ "$status" -gt 128 ]; then   # it may have exited just after the trap: fetch its own status
        wait "$_RADMM_PID" 2>/dev/null
        local again=$?
        [ "$again" -ne 127 ] && status=$again
    fi
    _RADMM_PID=
    case "$status" in
        0) _radmm_log "finished: $RUN_DIR" ;;
        2) _radmm_log "bad input (status 2): see the error above" ;;
        3)
            if [ -n "$_RADMM_TERM" ]; then
                # `scontrol requeue` would undo a user's scancel; Slurm's own preemption
                # (PreemptMode=REQUEUE) requeues the job by itself
                _radmm_log "stopped by SIGTERM (scancel, time limit or node shutdown) after writing a" \
                    "checkpoint (status 3): not requeueing; continue with RUN_DIR=$RUN_DIR sbatch ..."
                exit 3
            fi
            if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_RESTARTS" ]; then
                _radmm_log "preempted (status 3) but already restarted $MAX_RESTARTS times: not requeueing;" \
                    "resume by hand with RUN_DIR=$RUN_DIR"
                exit 3
            fi
            _radmm_log "preempted (status 3), checkpoint written: scontrol requeue $RADMM_JOB"
            if scontrol requeue "$RADMM_JOB"; then
                # Slurm now ends this run of the batch script and queues the job again
                exit 0
            fi
            _radmm_log "scontrol requeue failed (was the job submitted with --requeue?); resume with" \
                "RUN_DIR=$RUN_DIR sbatch ... (it continues from the checkpoint)"
            ;;
        4) _radmm_log "diverged (status 4): the last good checkpoint is kept in $RUN_DIR" ;;
        5) _radmm_log "a peer stopped answering (status 5: a node died or its network failed;" \
               "comm.timeout_s): continue from the last checkpoint with RUN_DIR=$RUN_DIR sbatch ..." ;;
        *) _radmm_log "failed with status $status (1 = internal error: radmm-hpc-error-rank*.log in $RUN_DIR)" ;;
    esac
    exit "$status"
}
