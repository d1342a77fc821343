#!/usr/bin/env bash
# slurm.sh: make test-slurm. A real single-machine Slurm cluster (munge and
# Slurm from Debian, daemons started by hand, no systemd) runs the shipped
# sbatch script slurm/train.sbatch:
#   - the training job with 2 tasks through sbatch --wait (srun --mpi=pmix),
#     its JSON summary checked;
#   - the same with CLIPMPI_LAUNCHER=mpirun (mpirun inside the allocation);
#   - slurm/train-torch.sbatch: PyTorch (DDP over gloo) with clipmpi.torch;
#   - the slurm package's view of both launches, agreeing with MPI;
#   - a task of 2 CPUs under each launcher, tasks bound to cores: it may
#     use both (srun of Slurm 22.05 does not read SLURM_CPUS_PER_TASK and
#     binds such a task to one core unless the script passes it on);
#   - a plain command in a batch script of 2 tasks: the cross-check fails;
#   - a rank killed mid-run under each launcher: the job fails within 10 s.
# Then a real two-node cluster: slurmctld in a "head" network namespace and
# one slurmd in each of hostA and hostB (the hosts of lib.sh, "two hosts in
# network namespaces") runs slurm/train-multinode.sbatch (2 nodes x 2
# tasks, srun and mpirun), and fault (b) under Slurm: the link to hostB is cut while mpirun runs the
# ranks; the job must end non-zero within 30 s, naming hostB. (It needs 2
# CPUs or more; with fewer it is skipped, and counted so.)
# Everything it starts is stopped at the end, also on failure or
# SIGINT/SIGTERM; the whole run is bounded (CLIPMPI_CLUSTER_LIMIT, 360 s).
#
#   scripts/cluster/slurm.sh [BIN]      (BIN: built bin/ directory, default ./bin)
# Environment: CLIPMPI_KEEP=1 keeps the work directory.
set -uo pipefail
CL_NAME=test-slurm
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:-$REPO/bin}" && pwd)
# shellcheck source=lib.sh
. "$REPO/scripts/cluster/lib.sh"
cd "$REPO" || exit 1

[ "$(id -u)" = 0 ] || skip_all "not root: installing and starting munged, slurmctld and slurmd needs root"
for b in train faultprog clustertool; do
	[ -x "$BIN/$b" ] || { fail "missing $BIN/$b (make test-slurm builds it)"; exit 1; }
done
# A killed earlier run may have left daemons (its munged among them) and
# namespaces: end them before looking for a munged.
sweep_stale
workdir slurm

# ---- packages and munge
munge_up() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
# A munged that answered before the install is someone else's: use it and
# leave it. One that the install started (where no policy-rc.d stops
# package scripts from starting services) or that we start is ours to stop.
command -v munge >/dev/null && munge_up && munge_theirs=1 || munge_theirs=0
apt_install munge slurmctld slurmd slurm-client openmpi-bin iproute2 procps
for c in munged slurmctld slurmd sbatch srun scontrol squeue scancel mpirun timeout; do
	command -v "$c" >/dev/null || skip_all "$c not found after installing Slurm"
done
if [ $munge_theirs = 0 ]; then
	on_exit 'log "stopping munged"; munged --stop >/dev/null 2>&1 || kill "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null'
fi
if ! munge_up; then
	[ -s /etc/munge/munge.key ] || {
		mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
	}
	install -d -o munge -g munge -m 0755 /run/munge
	install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
	runuser -u munge -- /usr/sbin/munged || { fail "munged did not start"; exit 1; }
	wait_until 5 munge_up || { fail "munge does not answer"; exit 1; }
	log "munged started"
elif [ $munge_theirs = 1 ]; then
	log "munged was already running: using it, leaving it running"
else
	log "munged started by the package install: using it, stopping it at the end"
fi

# Open MPI's session directories and shared memory segments go to the work
# directory (the jobs inherit both variables), so that what killed ranks
# leave goes with it.
export TMPDIR=$W/tmp OMPI_MCA_btl_vader_backing_directory=$W/shm
mkdir -p "$TMPDIR" "$OMPI_MCA_btl_vader_backing_directory" "$W/out"

# slurm_conf DIR CLUSTER CONTROLLER EXTRA NODE...: write DIR/slurm.conf for
# a cluster whose state, spool, tmp, pid and log files all lie under DIR.
# EXTRA: more lines (ports), or empty; NODE: a NodeName line
# without its memory and state (NodeName=N [NodeAddr=A] CPUs=C).
slurm_conf() {
	local dir=$1 cluster=$2 ctl=$3 extra=$4 node name
	shift 4
	mkdir -p "$dir/state" "$dir/log"
	{
		printf 'ClusterName=%s\nSlurmctldHost=%s\n' "$cluster" "$ctl"
		[ -z "$extra" ] || printf '%s\n' "$extra"
		cat <<EOF
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
TmpFS=$dir/tmp/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.%n.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
TaskPluginParam=Cores
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
SlurmdTimeout=30
KillWait=5
MinJobAge=600
EOF
		for node in "$@"; do
			name=${node#NodeName=}
			name=${name%% *}
			mkdir -p "$dir/spool/$name" "$dir/tmp/$name"
			echo "$node RealMemory=1000 State=UNKNOWN"
		done
		echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP"
	} >"$dir/slurm.conf"
}

# stop_cluster DIR [RUN...]: cancel every job, shut the cluster whose files
# are in DIR down (client commands through RUN, e.g. mn), and kill its
# daemons if they have not stopped within 10 s.
stop_cluster() {
	local dir=$1 f p c pids=()
	shift
	for f in "$dir"/*.pid; do
		p=$(cat "$f" 2>/dev/null)
		c=$(cat "/proc/$p/comm" 2>/dev/null)
		[[ $p =~ ^[0-9]+$ ]] && [[ $c == slurm* ]] && pids+=("$p")
	done
	"$@" timeout 10 scancel --user=root >/dev/null 2>&1
	wait_until 10 queue_empty "$@"
	"$@" timeout 10 scontrol shutdown >/dev/null 2>&1
	[ ${#pids[@]} = 0 ] && return
	if ! wait_until 10 gone "${pids[@]}"; then
		log "slurm daemons did not stop: killing them"
		kill -9 "${pids[@]}" 2>/dev/null
		wait_until 5 gone "${pids[@]}" || fail "cleanup: slurm daemons ${pids[*]} survive SIGKILL"
	fi
}
queue_empty() { [ -z "$("$@" timeout 10 squeue -h 2>/dev/null)" ]; }

# job_gone JID [RUN...]: the job has left the queue.
job_gone() { [ -z "$("${@:2}" squeue -h -j "$1" 2>/dev/null)" ]; }
# job_info JID [RUN...]: set JOB_STATE and JOB_EXIT from scontrol (empty if
# it says nothing).
job_info() {
	local info
	info=$("${@:2}" scontrol show job "$1" 2>/dev/null)
	JOB_STATE=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
	JOB_EXIT=$(sed -n 's/.* ExitCode=\([0-9:]*\).*/\1/p' <<<"$info")
}
# cancel JID [RUN...]: scancel the job and wait until it has left the
# queue, so that it holds no CPUs the next job waits for.
cancel() {
	[ -n "$1" ] || return 0
	"${@:2}" scancel "$1" >/dev/null 2>&1
	wait_until 20 job_gone "$@" || fail "job $1 still in the queue 20 s after scancel"
}

# submit NAME [sbatch args...]: sbatch --parsable, output in $W/out/NAME.out
# and a 5-minute limit in case everything else fails; sets JID.
submit() {
	local name=$1
	shift
	JID=$(sbatch --parsable --time=5 --job-name="$name" --output="$W/out/$name.out" "$@") || { JID=; return 1; }
}

# ---- the single-machine cluster: own state, ports and tmp, so that
# nothing clashes with another cluster on this machine.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 20000))
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null || { echo "$p"; return; }
	done
}
PORT=$(free_port)
C1=$W/slurm
slurm_conf "$C1" clipmpi localhost "SlurmctldPort=$PORT"$'\n'"SlurmdPort=$((PORT + 1))" "NodeName=localhost CPUs=$(nproc)"
export SLURM_CONF=$C1/slurm.conf

on_exit 'stop_cluster "$C1"; log "slurmctld and slurmd stopped"'
slurmctld -f "$SLURM_CONF" || { fail "slurmctld did not start"; show "$C1/log/slurmctld.log"; exit 1; }
slurmd -f "$SLURM_CONF" -N localhost || { fail "slurmd did not start"; show "$C1/log/slurmd.localhost.log"; exit 1; }
if ! wait_until 30 sh -c '[ "$(sinfo -h -o %T 2>/dev/null)" = idle ]'; then
	fail "the node did not become idle"
	sinfo
	show "$C1/log/slurmctld.log" 20
	show "$C1/log/slurmd.localhost.log" 20
	exit 1
fi
log "slurmctld and slurmd up (ports $PORT, $((PORT + 1))), node idle: $(sinfo -h -o '%P %D %T %N %c')"

# ---- 1. the training job, as a user runs it: sbatch --wait slurm/train.sbatch
need_time "the training job under srun" 30
SUM=$W/summary-srun.json
# make run's job (its global batch of 2048 as 1024 rows on each of 2
# tasks): held-out recall@1 must exceed 0.9 both ways. The two-node jobs
# (4 ranks on this machine's cores) run a short job, SHORT, and check that
# recall improved: make run's job takes them 100 s each on 2 busy cores.
TRAIN=(--progress lines)
MINREC=(-min-recall 0.9)
SHORT=(--batch-size 64 --epochs 2 --synth-rows 2048 --val-size 256 --progress lines)
t0=$(now)
CLIPMPI_PROGRAM=$BIN/train run_bg timeout -k 5 "$(lim 120)" sbatch --wait --parsable --time=5 --job-name=train-srun \
	--output="$W/out/train-srun.out" slurm/train.sbatch "${TRAIN[@]}" --batch-size 1024 --logs "$W/logs-srun" --summary "$SUM" >"$W/sbatch.log" 2>&1
rc=$?
s=$("$BIN/clustertool" summary -file "$SUM" -world 2 "${MINREC[@]}" 2>&1)
src=$?
if [ $rc = 0 ] && [ $src = 0 ] && grep -q "launcher srun" "$W/out/train-srun.out"; then
	pass "sbatch --wait slurm/train.sbatch (srun --mpi=pmix, 2 tasks): $s ($(elapsed "$t0") s)"
else
	fail "sbatch --wait slurm/train.sbatch (srun): rc=$rc; $s"
	show "$W/sbatch.log" 5
	show "$W/out/train-srun.out"
	cancel "$(grep -m1 -oE '^[0-9]+' "$W/sbatch.log")"
fi

# ---- 2. the same with mpirun inside the allocation
need_time "the training job under mpirun" 30
SUM=$W/summary-mpirun.json
t0=$(now)
if CLIPMPI_LAUNCHER=mpirun CLIPMPI_PROGRAM=$BIN/train submit train-mpirun slurm/train.sbatch "${TRAIN[@]}" --batch-size 1024 --logs "$W/logs-mpirun" --summary "$SUM" &&
	wait_until 120 job_gone "$JID"; then
	job_info "$JID"
	if [ "$JOB_STATE" = COMPLETED ] && grep -q "launcher mpirun" "$W/out/train-mpirun.out" &&
		s=$("$BIN/clustertool" summary -file "$SUM" -world 2 "${MINREC[@]}" 2>&1); then
		pass "slurm/train.sbatch with CLIPMPI_LAUNCHER=mpirun (mpirun inside the allocation): $s ($(elapsed "$t0") s)"
	else
		fail "slurm/train.sbatch with mpirun: job $JID $JOB_STATE exit $JOB_EXIT; $s"
		show "$W/out/train-mpirun.out"
	fi
else
	fail "slurm/train.sbatch with mpirun: not submitted or not finished within 120 s"
	show "$W/out/train-mpirun.out"
	cancel "$JID"
fi

# ---- 2b. clipmpi from PyTorch: slurm/train-torch.sbatch (srun): DDP over
# gloo averages the encoders' gradients, clipmpi.torch.ClipLoss computes
# the loss over MPI in the same processes.
need_time "the PyTorch job under srun" 40
if [ -f "$REPO/lib/libclipmpi.so" ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
	SUM=$W/summary-torch.json
	t0=$(now)
	if submit train-torch slurm/train-torch.sbatch --rows 2048 --val-size 256 --batch-size 128 --epochs 3 --summary "$SUM" &&
		wait_until 120 job_gone "$JID"; then
		job_info "$JID"
		if [ "$JOB_STATE" = COMPLETED ] && grep -q "launcher srun" "$W/out/train-torch.out" &&
			s=$("$BIN/clustertool" summary -file "$SUM" -world 2 2>&1); then
			pass "slurm/train-torch.sbatch (PyTorch DDP over gloo, the loss over MPI, srun --mpi=pmix): $s ($(elapsed "$t0") s)"
		else
			fail "slurm/train-torch.sbatch: job $JID $JOB_STATE exit $JOB_EXIT; $s"
			show "$W/out/train-torch.out"
		fi
	else
		fail "slurm/train-torch.sbatch: not submitted or not finished within 120 s"
		show "$W/out/train-torch.out"
		cancel "$JID"
	fi
else
	fail "slurm/train-torch.sbatch: lib/libclipmpi.so or /usr/bin/python3's torch is missing (make test-slurm makes both)"
fi

# ---- 3. what the slurm package reads under each launcher, checked
# against MPI; and a task of 2 CPUs may use both.
for launcher in srun mpirun; do
	need_time "slurm.Init under $launcher" 15
	name=env-$launcher
	if CLIPMPI_LAUNCHER=$launcher CLIPMPI_PROGRAM=$BIN/faultprog submit "$name" slurm/train.sbatch -seconds 0.5 &&
		wait_until 60 job_gone "$JID"; then
		job_info "$JID"
		out=$W/out/$name.out
		if [ $launcher = srun ]; then vars="SLURM_PROCID, SLURM_NTASKS), local rank 1/2 (SLURM_LOCALID)"; else vars="OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE), local rank 1/2 (OMPI_COMM_WORLD_LOCAL_RANK)"; fi
		if [ "$JOB_STATE" = COMPLETED ] && grep -qF "rank 1/2 ($vars, node localhost of 1, job $JID; 1 BLAS threads, " "$out" &&
			grep -qF "rank 0/2 (" "$out"; then
			pass "slurm.Init under $launcher agrees with MPI: $(grep -oF "rank 1/2 ($vars" "$out")"
		else
			fail "slurm.Init under $launcher: job $JID $JOB_STATE exit $JOB_EXIT"
			show "$out" 15
		fi
	else
		fail "slurm.Init under $launcher: job not submitted or not finished within 60 s"
		cancel "$JID"
	fi
done
if [ "$(nproc)" -ge 2 ]; then
	for launcher in srun mpirun; do
		need_time "2 CPUs per task under $launcher" 15
		name=cpus-$launcher
		if CLIPMPI_LAUNCHER=$launcher CLIPMPI_PROGRAM=$BIN/faultprog submit "$name" --ntasks-per-node=1 --cpus-per-task=2 \
			slurm/train.sbatch -seconds 0.2 && wait_until 60 job_gone "$JID"; then
			job_info "$JID"
			got=$(grep -m1 -oE '[0-9]+ BLAS threads, [0-9]+ CPUs usable' "$W/out/$name.out")
			if [ "$JOB_STATE" = COMPLETED ] && [ "$got" = "2 BLAS threads, 2 CPUs usable" ]; then
				pass "a task of 2 CPUs under $launcher (tasks bound to cores, TaskPlugin=task/affinity): $got"
			else
				fail "a task of 2 CPUs under $launcher: job $JID $JOB_STATE exit $JOB_EXIT, '$got' (want 2 BLAS threads, 2 CPUs usable)"
				show "$W/out/$name.out" 15
			fi
		else
			fail "2 CPUs per task under $launcher: job not submitted or not finished within 60 s"
			cancel "$JID"
		fi
	done
else
	skip "a task of 2 CPUs: this machine has $(nproc) CPU"
fi

# ---- 4. a plain command inside a 2-task batch script: MPI runs it alone,
# the launch environment says 2 ranks, and slurm.Init says so.
need_time "a plain command in a batch script" 15
cat >"$W/plain.sbatch" <<EOF
#!/bin/bash
#SBATCH --ntasks=2
exec $BIN/faultprog -seconds 0.5
EOF
if submit plain "$W/plain.sbatch" && wait_until 60 job_gone "$JID"; then
	job_info "$JID"
	msg="launch environment says rank 0 of 2 (SLURM_PROCID, SLURM_NTASKS) but MPI says rank 0 of 1: MPI started this process alone"
	if [ "$JOB_STATE" = FAILED ] && grep -qF "$msg" "$W/out/plain.out"; then
		pass "a plain command in a 2-task batch script fails the cross-check: job $JOB_STATE exit $JOB_EXIT, \"...$msg\""
	else
		fail "plain command in a batch script: job $JID $JOB_STATE exit $JOB_EXIT, expected FAILED and \"$msg\""
		show "$W/out/plain.out" 15
	fi
else
	fail "plain command in a batch script: job not submitted or not finished"
	cancel "$JID"
fi

# ---- 5. fault (a) under Slurm: a rank killed mid-run ends the job within 10 s.
for launcher in srun mpirun; do
	need_time "fault (a) under $launcher" 45
	name=kill-$launcher
	rm -f "$W/fp-$launcher".rank*
	if ! CLIPMPI_LAUNCHER=$launcher CLIPMPI_PROGRAM=$BIN/faultprog submit "$name" slurm/train.sbatch -seconds 60 -pidfile "$W/fp-$launcher"; then
		fail "fault (a) under $launcher: sbatch failed"
		continue
	fi
	if ! wait_until 30 grep -qs "step" "$W/out/$name.out" || [ ! -s "$W/fp-$launcher.rank1" ]; then
		fail "fault (a) under $launcher: the job did not start running within 30 s"
		show "$W/out/$name.out" 15
		cancel "$JID"
		continue
	fi
	t0=$(now)
	kill -9 "$(cat "$W/fp-$launcher.rank1")"
	if wait_until 30 job_gone "$JID"; then
		dt=$(elapsed "$t0")
		job_info "$JID"
		if [ "$JOB_STATE" = FAILED ] && le "$dt" 10; then
			pass "fault (a) under Slurm ($launcher): rank 1 killed -> job $JOB_STATE exit $JOB_EXIT after $dt s (bound 10 s): $(grep -m1 -oE 'task 1: Killed|rank 1 with PID [0-9]+ on node [a-z]+ exited on signal 9' "$W/out/$name.out")"
		else
			fail "fault (a) under Slurm ($launcher): job $JOB_STATE exit $JOB_EXIT after $dt s (want FAILED within 10 s)"
			show "$W/out/$name.out" 15
		fi
	else
		fail "fault (a) under Slurm ($launcher): job still in the queue 30 s after the kill"
		cancel "$JID"
	fi
done

# ---- 6. two nodes: slurmctld in a "head" network namespace, one slurmd in
# each of hostA and hostB (the hosts of lib.sh's net_up), running
# slurm/train-multinode.sbatch as shipped: 2 nodes x 2 tasks.
MN=$W/mn
# mn CMD...: a Slurm client command in head, against the two-node cluster.
mn() { SLURM_CONF=$MN/slurm.conf nsx "$NS_HEAD" head "$@"; }
mn_idle() { [ "$(mn sinfo -h -o %T 2>/dev/null)" = idle ]; }
# mn_ended JID: the batch script has ended (the job is not RUNNING any more;
# it may be COMPLETING until Slurm hears from every node).
mn_ended() { ! mn scontrol show job "$1" 2>/dev/null | grep -q 'JobState=RUNNING'; }
two_nodes() {
	mkdir -p "$MN/out"
	slurm_conf "$MN" clipmpi2 "head($SUB.254)" "" \
		"NodeName=hostA NodeAddr=$SUB.1 CPUs=2" "NodeName=hostB NodeAddr=$SUB.2 CPUs=2"
	on_exit 'stop_cluster "$MN" mn; log "two-node Slurm shut down"'
	SLURM_CONF=$MN/slurm.conf nsx "$NS_HEAD" head slurmctld -f "$MN/slurm.conf" &&
		SLURM_CONF=$MN/slurm.conf nsx "$NS_A" hostA slurmd -f "$MN/slurm.conf" -N hostA &&
		SLURM_CONF=$MN/slurm.conf nsx "$NS_B" hostB slurmd -f "$MN/slurm.conf" -N hostB ||
		{ fail "two-node Slurm: daemons did not start"; show "$MN/log/slurmctld.log" 10; return; }
	if ! wait_until 30 mn_idle; then
		fail "two-node Slurm: hostA and hostB did not become idle"
		mn sinfo -N
		show "$MN/log/slurmctld.log" 10
		return
	fi
	log "two-node Slurm up: $(mn sinfo -h -N -o '%N:%T' | tr '\n' ' ')"

	# Training as shipped, under each launcher: 4 ranks over 2 nodes.
	local launcher sum t0 s jid
	for launcher in srun mpirun; do
		need_time "two-node training under $launcher" 30
		sum=$MN/summary-$launcher.json
		t0=$(now)
		jid=$(CLIPMPI_LAUNCHER=$launcher CLIPMPI_PROGRAM=$BIN/train mn sbatch --parsable --time=5 --job-name="mn-train-$launcher" \
			--output="$MN/out/train-$launcher.out" slurm/train-multinode.sbatch "${SHORT[@]}" --logs "$MN/logs-$launcher" --summary "$sum")
		if [ -z "$jid" ] || ! wait_until 120 job_gone "$jid" mn; then
			fail "slurm/train-multinode.sbatch ($launcher): not submitted or not finished within 120 s"
			show "$MN/out/train-$launcher.out" 20
			cancel "$jid" mn
			continue
		fi
		if s=$("$BIN/clustertool" summary -file "$sum" -world 4 2>&1) && grep -q "on hostA,hostB: 4 ranks" "$MN/out/train-$launcher.out"; then
			pass "slurm/train-multinode.sbatch on 2 nodes x 2 tasks ($launcher): $s ($(elapsed "$t0") s)"
		else
			fail "slurm/train-multinode.sbatch ($launcher): $s"
			show "$MN/out/train-$launcher.out" 20
		fi
	done

	# Fault (b) under Slurm: the link to hostB cut while mpirun (inside the
	# allocation, keepalive settings from the script) runs the ranks.
	need_time "fault (b) under Slurm" 45
	rm -f "$MN"/cut.pid.rank*
	jid=$(CLIPMPI_LAUNCHER=mpirun CLIPMPI_PROGRAM=$BIN/faultprog mn sbatch --parsable --time=5 --job-name=mn-cut \
		--output="$MN/out/cut.out" slurm/train-multinode.sbatch -seconds 100 -pidfile "$MN/cut.pid")
	if [ -z "$jid" ] || ! wait_until 30 sh -c "[ -s '$MN/cut.pid.rank3' ] && grep -q 'faultprog: step' '$MN/out/cut.out'"; then
		fail "fault (b) under Slurm: the job did not start within 30 s"
		show "$MN/out/cut.out" 15
		cancel "$jid" mn
		return
	fi
	local hosts note
	hosts=$(grep -oE 'rank [0-9] of 4 pid [0-9]+ on host[AB]' "$MN/out/cut.out" | sed 's/ pid [0-9]*//' | sort | paste -sd, | sed 's/,/, /g')
	t0=$(now)
	ip -n "$NS_B" link set veth0 down
	wait_until 40 mn_ended "$jid"
	dt=$(elapsed "$t0")
	job_info "$jid" mn
	note=$(grep -m1 -A8 'lost communication with a remote daemon' "$MN/out/cut.out" | grep -m1 -oE 'daemon.* on node hostB')
	if le "$dt" 30 && [ -n "$JOB_STATE" ] && [ "$JOB_STATE" != RUNNING ] && [[ $JOB_EXIT =~ ^[1-9][0-9]*: ]] && [ -n "$note" ]; then
		pass "fault (b) under Slurm (mpirun in a 2-node allocation; $hosts): link to hostB cut -> batch script ended after $dt s (bound 30 s), JobState=$JOB_STATE ExitCode=$JOB_EXIT, \"ORTE has lost communication with a remote daemon ... $note\""
	else
		fail "fault (b) under Slurm: link to hostB cut -> after $dt s: JobState='$JOB_STATE' ExitCode='$JOB_EXIT' (want the job ended with a non-zero exit code within 30 s naming hostB)"
		show "$MN/out/cut.out" 20
	fi
	ip -n "$NS_B" link set veth0 up
	cancel "$jid" mn
}

if [ "$(nproc)" -lt 2 ]; then
	skip "two-node Slurm: this machine has $(nproc) CPU, and the two-node slurm.conf gives each node 2"
elif ! command -v nsenter >/dev/null; then
	skip "two-node Slurm: nsenter not found"
elif ! command -v ip >/dev/null; then
	skip "two-node Slurm: ip not found (package iproute2)"
elif ! net_probe; then
	skip "two-node Slurm: $NET_SKIP"
else
	on_exit net_down
	net_up && two_nodes
fi
