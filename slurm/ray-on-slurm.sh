# Ray across a SLURM allocation, and a tune-fusion search on it. Sourced by search.sbatch (the file to copy and
# edit); nothing here needs editing. What it does, in order:
#   1. the ports Ray would take from fixed defaults derived from the job id, so that two jobs sharing a node do
#      not collide;
#   2. a token made for this job (Ray's token authentication on every node and the driver), kept in the
#      environment only: never written to a file, the script or the log;
#   3. Ray's head on the first node and a worker on every other one (`srun`, one task per node), each telling Ray
#      the CPUs and GPUs SLURM granted there;
#   4. run_search.py on the head with --address and --storage; SIGUSR1 (the time-limit warning) and SIGTERM
#      (preemption, scancel) are passed to it, and it stops cleanly with exit status 75;
#   5. Ray stopped on every node; after a clean stop the job requeues itself and the next run continues the search
#      (--resume auto). A finished or failed search is not requeued.

tf_say() { echo "[$(date +%H:%M:%S)] slurm: $*"; }

tf_ports() {  # a block of 200 ports per job id (20000-59999) for what Ray would take from fixed defaults
    # (6379, 10001, 8265, 52365) and the workers' range; Ray picks its other ports free when each node starts
    local base=$((20000 + (SLURM_JOB_ID % 200) * 200))
    export TF_PORT=$base TF_CLIENT_PORT=$((base + 1)) TF_DASHBOARD_PORT=$((base + 2)) TF_AGENT_PORT=$((base + 3))
    export TF_MIN_WORKER_PORT=$((base + 10)) TF_MAX_WORKER_PORT=$((base + 199))
}

tf_gpus() {  # the GPUs SLURM granted on this node: CUDA_VISIBLE_DEVICES when set, else SLURM_GPUS_ON_NODE, else 0
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != NoDevFiles ]]; then
        local ids
        IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        echo "${#ids[@]}"
    else
        echo "${SLURM_GPUS_ON_NODE:-0}"
    fi
}

tf_cpus() { echo "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"; }

tf_ray_node() {  # on one node (through srun): Ray's head or a worker, in the foreground until the job stops it
    local role=$1
    local args=(--block --disable-usage-stats --node-ip-address="$(node_ip)" --num-cpus="$(tf_cpus)"
                --num-gpus="$(tf_gpus)" --temp-dir="$TF_RAY_TMP" --dashboard-agent-listen-port="$TF_AGENT_PORT"
                --min-worker-port="$TF_MIN_WORKER_PORT" --max-worker-port="$TF_MAX_WORKER_PORT")
    if [[ -n ${SLURM_MEM_PER_NODE:-} ]]; then  # what the job was granted, not the whole node (MB)
        args+=(--memory=$((SLURM_MEM_PER_NODE * 1048576)) --object-store-memory=$((SLURM_MEM_PER_NODE * 209715)))
    fi
    if [[ $role == head ]]; then
        args+=(--head --port="$TF_PORT" --ray-client-server-port="$TF_CLIENT_PORT" --dashboard-host=127.0.0.1
               --dashboard-port="$TF_DASHBOARD_PORT")
    else
        args+=(--address="$TF_HEAD")
    fi
    local log=$TF_LOGS/ray-${SLURMD_NODENAME:-node}.log
    echo "== $(date -Is) job ${SLURM_JOB_ID} run $((${SLURM_RESTART_COUNT:-0} + 1)): $role on $(hostname)" >>"$log"
    trap : TERM  # SIGTERM is how the job stops Ray here: `ray start` stops its processes; that is no failure
    # no draining on SIGTERM (Ray waits up to 30 s for it by default; nothing runs here that drains)
    RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 ray start "${args[@]}" >>"$log" 2>&1 || true
}

tf_wait_for_head() {  # until Ray's head answers (at most 120 s)
    local deadline=$((SECONDS + 120))
    until (exec 3<>"/dev/tcp/${TF_HEAD%:*}/${TF_PORT}") 2>/dev/null; do
        if ((SECONDS > deadline)) || ! kill -0 "${TF_STEPS[0]}" 2>/dev/null; then
            tf_say "Ray's head did not start: see $TF_LOGS/ray-${TF_NODES[0]}.log"
            return 1
        fi
        sleep 1
    done
}

tf_wait_for_nodes() {  # until every node of the allocation has joined (at most 300 s)
    python - "$TF_HEAD" "$1" <<'EOF'
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
want, deadline = int(sys.argv[2]), time.time() + 300
while (alive := sum(bool(n["Alive"]) for n in ray.nodes())) < want:
    if time.time() > deadline:
        sys.exit(f"only {alive} of {want} nodes joined Ray in 300 s: see the node logs")
    time.sleep(1)
EOF
}

tf_stop_ray() {  # Ray on every node of this job, and nothing else (other jobs' Ray on a shared node keeps running)
    trap - EXIT
    # SIGTERM to the steps' tasks: `ray start --block` stops the Ray processes it started
    scancel --quiet --signal=TERM $(squeue -h -s -j "$SLURM_JOB_ID" -o %i | grep -v -e batch -e extern) 2>/dev/null
    local step
    for step in "${TF_STEPS[@]}"; do wait "$step" 2>/dev/null; done
    tf_say "Ray stopped on ${#TF_NODES[@]} node(s)"
}

tf_search() {  # the search on this allocation; "$@": run_search.py's flags
    local job=$SLURM_JOB_ID restart=${SLURM_RESTART_COUNT:-0}
    mapfile -t TF_NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
    tf_ports
    export RAY_AUTH_MODE=token
    RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')  # this job's; never printed
    export RAY_AUTH_TOKEN
    export TF_RAY_TMP=/tmp/ray-$job  # short: Ray's socket paths must stay under 107 bytes
    export TF_LOGS=${TF_LOGS:-$SLURM_SUBMIT_DIR/tune-fusion-$job.ray}
    mkdir -p "$TF_LOGS"
    export TF_HEAD
    TF_HEAD=$(node_ip):$TF_PORT
    export -f node_ip tf_ray_node tf_cpus tf_gpus
    tf_say "job $job, run $((restart + 1)): ${#TF_NODES[@]} node(s) (${TF_NODES[*]}), $(tf_cpus) CPU and $(tf_gpus) GPU each; Ray head $TF_HEAD; storage $STORAGE"

    TF_STEPS=() TF_STOP=""
    # until the driver runs, a stop signal is remembered (the driver is then not started); after it ended, ignored
    trap 'TF_STOP=SIGUSR1; tf_say "SIGUSR1: the time limit is near"' USR1
    trap 'TF_STOP=SIGTERM; tf_say "SIGTERM"' TERM
    trap tf_stop_ray EXIT
    # srun's own messages (a step cancelled as Ray stops) go beside the nodes' logs
    srun --nodes=1 --ntasks=1 --nodelist="${TF_NODES[0]}" bash -c 'tf_ray_node head' >>"$TF_LOGS/srun.log" 2>&1 &
    TF_STEPS+=($!)
    tf_wait_for_head || return 1
    if ((${#TF_NODES[@]} > 1)); then
        srun --nodes=$((${#TF_NODES[@]} - 1)) --ntasks=$((${#TF_NODES[@]} - 1)) --ntasks-per-node=1 \
            --exclude="${TF_NODES[0]}" bash -c 'tf_ray_node worker' >>"$TF_LOGS/srun.log" 2>&1 &
        TF_STEPS+=($!)
    fi
    tf_wait_for_nodes "${#TF_NODES[@]}" || return 1
    tf_say "Ray is up on ${#TF_NODES[@]} node(s)"
    if [[ -n $TF_STOP ]]; then
        tf_stop_ray
        tf_requeue 75
        return 75
    fi

    local again=()
    ((restart > 0)) && again=(--resume auto)  # the next run of the job continues what the last one saved
    python run_search.py --address "$TF_HEAD" --storage "$STORAGE" --stop-within "$STOP_WITHIN" "$@" "${again[@]}" &
    TF_DRIVER=$!
    trap 'TF_STOP=SIGUSR1; tf_say "SIGUSR1: the time limit is near"; kill -USR1 "$TF_DRIVER" 2>/dev/null' USR1
    trap 'TF_STOP=SIGTERM; tf_say "SIGTERM"; kill -TERM "$TF_DRIVER" 2>/dev/null' TERM
    local status
    while true; do  # a trapped signal ends `wait` early: wait again until the driver has ended
        wait "$TF_DRIVER"
        status=$?
        kill -0 "$TF_DRIVER" 2>/dev/null || break
    done
    wait "$TF_DRIVER" 2>/dev/null
    local last=$?
    ((last != 127)) && status=$last
    # killed by the signal passed on before it could catch it (Python still starting): nothing was started to lose
    [[ -n $TF_STOP && ($status == 138 || $status == 143) ]] && status=75
    tf_say "the driver has ended (exit $status)"
    trap 'tf_say "SIGUSR1 after the search ended: ignored"' USR1
    trap 'tf_say "SIGTERM after the search ended"' TERM
    tf_stop_ray
    tf_requeue "$status"
    return "$status"
}

tf_requeue() {  # after the driver's exit status $1: requeue the job when the search stopped cleanly, not otherwise
    case $1 in
        0) tf_say "the search has ended: not requeued" ;;
        75) tf_say "stopped cleanly (exit 75): requeueing job $SLURM_JOB_ID; its next run continues the search"
            scontrol requeue "$SLURM_JOB_ID" ||
                tf_say "not requeued (a cancelled job stays cancelled): continue with the same sbatch command plus --resume" ;;
        *) tf_say "the driver failed (exit $1): not requeued; see the lines above" ;;
    esac
}
