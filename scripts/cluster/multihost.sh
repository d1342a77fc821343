#!/usr/bin/env bash
# multihost.sh: make test-multihost. Two "hosts", hostA and hostB, are
# network namespaces joined by veth pairs to a bridge in a third, head,
# where mpirun runs; mpirun starts its daemons on the hosts through an rsh
# agent that enters their namespaces, and the ranks talk over TCP only
# (--mca btl tcp,self), exactly as on separate machines. It runs:
#   - the golden tests (every world size >= 2 among the cases) across hosts,
#     checking that the ranks on hostB hold a TCP connection to hostA;
#   - a short training run across hosts, its JSON summary checked;
#   - the fault cases, each with its time bound:
#     (a) a rank killed mid-run                 -> non-zero exit within 10 s
#     (b) the link to hostB cut mid-run         -> non-zero exit within 30 s, naming hostB
#     (c) one rank with another batch size or dimension -> the same error on
#         every rank, non-zero exit within 10 s (the loss mid-run, and the
#         training program at start)
#     (d) NaN or Inf in one rank's features     -> the same, within 10 s
#     (e) the job killed while a checkpoint is being written -> the previous
#         checkpoint is intact, resuming from it reproduces the uninterrupted
#         run exactly, and (with clip's fixed temporary name) the resumed run
#         leaves no temporary file behind.
# (test-slurm runs fault (b) once more under Slurm, on a two-node cluster.)
# Namespaces, veths and processes are removed at the end, also on failure
# or SIGINT/SIGTERM; the whole run is bounded (CLIPMPI_CLUSTER_LIMIT, 360 s).
#
#   scripts/cluster/multihost.sh [BIN]      (BIN: built bin/ directory, default ./bin)
# Environment: CLIPMPI_GOLDEN (golden cases), CLIPMPI_KEEP=1 keeps the work directory.
set -uo pipefail
CL_NAME=test-multihost
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${1:-$REPO/bin}" && pwd)
# shellcheck source=lib.sh
. "$REPO/scripts/cluster/lib.sh"
export CLIPMPI_GOLDEN=${CLIPMPI_GOLDEN:-$REPO/test/testdata/golden}

[ "$(id -u)" = 0 ] || skip_all "not root: creating network namespaces and veth pairs needs root"
for b in train faultprog clustertool golden.test; do
	[ -x "$BIN/$b" ] || { fail "missing $BIN/$b (make test-multihost builds it)"; exit 1; }
done
sweep_stale
workdir multihost
apt_install iproute2 procps
command -v ip >/dev/null || skip_all "ip not found (package iproute2)"
for c in ss ps unshare nsenter mpirun timeout; do
	command -v "$c" >/dev/null || skip_all "$c not found"
done

# ---- the network: head (bridge, mpirun) -- hostA, hostB
net_probe || skip_all "$NET_SKIP"
on_exit net_down
net_up || exit 1
# The rsh agent and Open MPI across the namespaces (lib.sh): daemons through
# the agent, TCP only on the test subnet, the short keepalive, one BLAS
# thread per rank, session directories and shared memory in the work
# directory, so that what killed ranks leave goes with it.
export OPENBLAS_NUM_THREADS=1
mpi_hosts

# mpirun_x LIMIT ARGS...: mpirun in head (private /etc/hosts naming the
# hosts, host name "head"), bounded by LIMIT seconds or what is left of the
# run's (then SIGKILL 5 s later).
mpirun_x() {
	local limit
	limit=$(lim "$1")
	shift
	timeout -k 5 "$limit" ip netns exec "$NS_HEAD" unshare --uts --mount --propagation private /bin/bash -c \
		'mount --bind "$0" /etc/hosts && hostname head && exec "$@"' "$W/hosts" \
		mpirun --allow-run-as-root --bind-to none --mca pml ob1 --mca btl tcp,self \
		-x OPENBLAS_NUM_THREADS -x CLIPMPI_GOLDEN -x TMPDIR "$@"
}
# reap: end whatever a finished test left in the namespaces.
reap() { ns_clear 5 "${NSS[@]}" || fail "processes in the namespaces survive SIGKILL for 5 s"; }
vethbytes() { ip -n "$NS_B" -s link show veth0 | awk '/RX:/ { getline; print $1 }'; }
# watch_btl OUT COMM: until killed, look in hostB for an established TCP
# connection of a process named COMM to hostA (the ranks' own link; the
# daemon on hostB talks to head) and write the first one seen to OUT.
watch_btl() {
	local l
	while :; do
		l=$(nsenter --net="/run/netns/$NS_B" ss -Htnp state established dst "$SUB.1" 2>/dev/null | grep -F "((\"$2\"" | head -1)
		[ -n "$l" ] && { echo "$l" >"$1"; return; }
		sleep 0.1
	done
}
# ns_now: nanoseconds since the epoch.
ns_now() { date +%s%N; }
# secs NS0 NS1: seconds from NS0 to NS1, two decimals.
secs() { awk -v a="$2" -v b="$1" 'BEGIN { printf "%.2f", (a - b) / 1e9 }'; }

# ---- 0. the hosts answer
t0=$(now)
run_bg mpirun_x 30 -np 2 --host hostA,hostB hostname >"$W/hostname.log" 2>&1
if [ "$(sort "$W/hostname.log" | tr '\n' ' ')" = "hostA hostB " ]; then
	pass "mpirun from head starts one rank on each of hostA and hostB ($(elapsed "$t0") s)"
else
	fail "mpirun across the namespaces: $(head -c 400 "$W/hostname.log")"
	exit 1
fi

# ---- 1. golden tests across hosts
worlds=$(cd "$REPO/test" && "$BIN/golden.test" -golden.worlds) || { fail "golden.test -golden.worlds"; worlds=; }
for w in $worlds; do
	[ "$w" -ge 2 ] || continue
	need_time "the golden tests on $w ranks" 20
	t0=$(now)
	b0=$(vethbytes)
	rm -f "$W/btl-np$w"
	watch_btl "$W/btl-np$w" golden.test &
	watcher=$!
	run_bg mpirun_x 300 -np "$w" --host "hostA:$w,hostB:$w" --map-by node \
		"$BIN/golden.test" -test.run TestGoldenMPI -test.v >"$W/golden-np$w.log" 2>&1
	rc=$?
	kill_tree "$watcher"
	wait "$watcher" 2>/dev/null
	kb=$((($(vethbytes) - b0) / 1024))
	runs=$(grep -c -E '^        --- PASS' "$W/golden-np$w.log")
	conn=$(awk '{ print $3 " <-> " $4 }' "$W/btl-np$w" 2>/dev/null)
	if [ $rc = 0 ] && grep -q '^PASS' "$W/golden-np$w.log" && [ -n "$conn" ]; then
		pass "golden tests on $w ranks over hostA and hostB (TCP only): $runs algorithm runs passed; ranks connected $conn; $kb KiB through hostB's veth ($(elapsed "$t0") s)"
	else
		fail "golden tests on $w ranks across hosts: rc=$rc, rank-to-rank TCP connection seen in hostB: '${conn:-none}'"
		grep -E -B2 -A10 'FAIL|panic' "$W/golden-np$w.log" | head -40 | sed 's/^/    | /'
		show "$W/golden-np$w.log" 10
	fi
	reap
done

# ---- 2. training across hosts
need_time "the training run" 30
# make run's job: held-out recall@1 must exceed 0.9 both ways.
TRAIN=(--progress lines)
t0=$(now)
run_bg mpirun_x 120 -np 2 --host hostA,hostB "$BIN/train" "${TRAIN[@]}" --logs "$W/logs" --summary "$W/summary.json" >"$W/train.log" 2>&1
rc=$?
s=$("$BIN/clustertool" summary -file "$W/summary.json" -world 2 -min-recall 0.9 2>&1)
src=$?
if [ $rc = 0 ] && [ $src = 0 ]; then
	pass "training on 2 ranks over hostA and hostB: $s ($(elapsed "$t0") s)"
else
	fail "training across hosts: rc=$rc; $s"
	show "$W/train.log"
fi
reap

# ---- fault helpers
# start NAME LIMIT MPIRUN-ARGS...: mpirun_x in the background; output in
# $W/NAME.log, and the time it exited (ns) in $W/NAME.end.
start() {
	local name=$1 limit=$2
	shift 2
	LOG=$W/$name.log
	JOBNAME=$name
	rm -f "$W/$name.pid".rank* "$W/$name.end"
	{
		mpirun_x "$limit" "$@"
		rc=$?
		ns_now >"$W/$name.end"
		exit $rc
	} >"$LOG" 2>&1 &
	JOB=$!
}
# running NAME: both ranks wrote their pid and rank 0 reported a step.
running() { [ -s "$W/$1.pid.rank0" ] && [ -s "$W/$1.pid.rank1" ] && grep -q 'faultprog: step' "$LOG"; }
# finish: wait for the job; sets RC and END (ns since the epoch, when
# mpirun exited).
finish() {
	wait "$JOB"
	RC=$?
	END=$(cat "$W/$JOBNAME.end" 2>/dev/null)
	[ -n "$END" ] || END=$(ns_now)
}
# stop_job: end the job (mpirun, its timeout, whatever runs under them).
stop_job() {
	kill_tree "$JOB"
	finish
}
# same_error PREFIX: every rank (0 and 1) printed exactly one line
# PREFIX MESSAGE, and the messages are identical; sets MSG. PREFIX is an
# extended regular expression in which @R@ stands for the rank.
same_error() {
	local any=${1//@R@/[0-9]} lines
	lines=$(grep -E "$any" "$LOG" | sed -E "s#$any##")
	MSG=$(sort -u <<<"$lines")
	[ "$(grep -cE "$any" "$LOG")" = 2 ] && [ -n "$MSG" ] && [ "$(wc -l <<<"$MSG")" = 1 ] &&
		grep -qE "${1//@R@/0}" "$LOG" && grep -qE "${1//@R@/1}" "$LOG"
}

FP=("$BIN/faultprog" -b 64 -d 32)
# In the checks below the time bound also rules out mpirun_x's timeout.

# ---- (a) a rank killed mid-run
need_time "fault (a)" 20
start kill 120 -np 2 --host hostA,hostB "${FP[@]}" -seconds 100 -pidfile "$W/kill.pid"
if wait_until 30 running kill; then
	t0=$(ns_now)
	kill -9 "$(cat "$W/kill.pid.rank1")"
	finish
	dt=$(secs "$t0" "$END")
	note=$(grep -m1 -oE 'process rank 1 with PID [0-9]+ on node hostB exited on signal 9[^.]*' "$LOG")
	if [ "$RC" != 0 ] && le "$dt" 10 && [ -n "$note" ]; then
		pass "fault (a): rank 1 on hostB killed -> mpirun exit $RC after $dt s (bound 10 s): \"$note\""
	else
		fail "fault (a): rank 1 killed -> exit $RC after $dt s (want non-zero within 10 s and a message naming rank 1 on hostB)"
		show "$LOG" 15
	fi
else
	fail "fault (a): the job did not start within 30 s"
	show "$LOG" 15
	stop_job
fi
reap

# ---- (b) the link to hostB cut mid-run
need_time "fault (b)" 40
start cut 120 -np 2 --host hostA,hostB "${FP[@]}" -seconds 100 -pidfile "$W/cut.pid"
if wait_until 30 running cut; then
	t0=$(ns_now)
	ip -n "$NS_B" link set veth0 down
	finish
	dt=$(secs "$t0" "$END")
	note=$(grep -m1 -A8 'lost communication with a remote daemon' "$LOG" | grep -m1 -oE '[^ ]*daemon.* on node hostB' | head -1)
	if [ "$RC" != 0 ] && le "$dt" 30 && [ -n "$note" ]; then
		pass "fault (b): link to hostB cut -> mpirun exit $RC after $dt s (bound 30 s): \"ORTE has lost communication with a remote daemon ... $note\""
	else
		fail "fault (b): link cut -> exit $RC after $dt s (want non-zero within 30 s and a message naming hostB)"
		show "$LOG" 20
	fi
	left=$(ip netns pids "$NS_B" | wc -l)
	reap
	log "after the cut: $left process(es) were left in hostB's namespace once mpirun had exited; killed them"
else
	fail "fault (b): the job did not start within 30 s"
	show "$LOG" 15
	stop_job
fi
ip -n "$NS_B" link set veth0 up
reap

# ---- (c), (d) with the loss mid-run: one rank's batch, dimension, or
# features go bad after 1 s; every rank must print the same error.
for fault in shape dim nan inf; do
	case $fault in
	shape | dim) case=c want="ranks disagree" ;;
	*) case=d want="non-finite input" ;;
	esac
	need_time "fault ($case) $fault" 15
	start "fault-$fault" 60 -np 2 --host hostA,hostB "${FP[@]}" -seconds 60 -fault "$fault" -fault-rank 1 -fault-after 1s
	finish
	inj=$(grep -m1 -oE 'injects [a-z]+ at unixnano=[0-9]+' "$LOG" | sed 's/.*=//')
	if [ -n "$inj" ]; then
		dt=$(secs "$inj" "$END")
	else
		dt=?
	fi
	if [ "$RC" = 3 ] && [ -n "$inj" ] && le "$dt" 10 && same_error '^faultprog: rank @R@ of 2: step [0-9]+: ' && [[ $MSG == *"$want"* ]]; then
		pass "fault ($case) $fault on rank 1 of 2 (hostB), loss mid-run: exit $RC $dt s after the injection (bound 10 s); both ranks: \"$MSG\""
	else
		fail "fault ($case) $fault: exit $RC, $dt s after the injection; want exit 3 within 10 s and one identical \"$want\" message from each rank"
		show "$LOG" 20
	fi
	reap
done

# ---- (c) with the training program: rank 1 started with another batch
# size or embedding dimension (an MPMD launch), detected at start.
# The training program prints an error that the ranks decided together
# once, "train: rank R: CAUSE" (R the rank that met it) or "train: CAUSE".
TRAIN_ERR='^train: '
# one_error PATTERN: exactly one line of $LOG matches PATTERN; MSG is that
# line without the match.
one_error() {
	local lines
	lines=$(grep -E "$1" "$LOG")
	MSG=$(sed -E "s#$1##" <<<"$lines")
	[ -n "$lines" ] && [ "$(wc -l <<<"$lines")" = 1 ]
}
TR=("$BIN/train" --epochs 1 --synth-rows 2048 --val-size 256 --logs "" --progress lines)
for flag in "--batch-size 64:32" "--embed-dim 64:32"; do
	name=${flag%% *}
	vals=${flag#* }
	need_time "fault (c) training with differing $name" 15
	t0=$(ns_now)
	start "train${name}" 60 -np 1 --host hostA "${TR[@]}" "$name" "${vals%:*}" : -np 1 --host hostB "${TR[@]}" "$name" "${vals#*:}"
	finish
	dt=$(secs "$t0" "$END")
	if [ "$RC" != 0 ] && le "$dt" 10 && one_error "$TRAIN_ERR" && [[ $MSG == *"disagree"* ]]; then
		pass "fault (c) training with $name ${vals%:*} on rank 0 and ${vals#*:} on rank 1: exit $RC after $dt s from launch (bound 10 s); printed once: \"$MSG\""
	else
		fail "fault (c) training with differing $name: exit $RC after $dt s; want non-zero within 10 s and the cause printed once"
		show "$LOG" 20
	fi
	reap
done

# ---- (d) with the training program: a NaN in a training row of rank 1's shard.
need_time "fault (d) training data with a NaN" 15
if run_bg "$BIN/train" gen-data --out "$W/nandata" --rows 2048 --val-size 256 --shards 2 --nan-row 1500 >"$W/gendata.log" 2>&1; then
	t0=$(ns_now)
	start train-nan 60 -np 2 --host hostA,hostB "${TR[@]}" --train-data "$W/nandata/train" --val-data "$W/nandata/val"
	finish
	dt=$(secs "$t0" "$END")
	if [ "$RC" != 0 ] && le "$dt" 10 && one_error "$TRAIN_ERR" && [[ $MSG == *NaN* || $MSG == *finite* ]]; then
		pass "fault (d) training data with a NaN in rank 1's shard: exit $RC after $dt s from launch (bound 10 s); printed once: \"$MSG\""
	else
		fail "fault (d) training data with a NaN: exit $RC after $dt s; want non-zero within 10 s and the cause printed once"
		show "$LOG" 20
	fi
	reap
else
	fail "train gen-data --nan-row"
	show "$W/gendata.log"
fi

# ---- (e) the job killed while a checkpoint is being written.
# Large MLP heads make a checkpoint of several MB; one is written per epoch.
# clip writes it to a temporary file, .latest.ckpt.tmp-partial (a fixed
# name; before that, .latest.ckpt.tmp-<random>), and renames it onto
# latest.ckpt. clustertool kills the ranks while the temporary file exists
# and latest.ckpt is an earlier checkpoint; a try in which the rename wins
# the race is run again, three tries in all.
CK=("$BIN/train" --batch-size 64 --synth-rows 512 --val-size 128 --epochs 6 --head mlp --hidden 1024 --progress lines)
CKDIR=$W/ck/checkpoints
ckpt_case() {
	rm -rf "$W/ck" "$W/ck-ref"
	"$BIN/clustertool" killwrite -dir "$CKDIR" -tmp .latest.ckpt.tmp -after latest.ckpt \
		-tag "$CLIPMPI_CLUSTER_RUN" -timeout "$(lim 60)s" >"$W/killwrite.log" 2>&1 &
	local kw=$!
	start ckpt 90 -np 2 --host hostA,hostB -x CLIPMPI_CLUSTER_RUN "${CK[@]}" --logs "$W/ck"
	wait "$kw"
	KW=$?
	finish
}
for try in 1 2 3; do
	need_time "fault (e)" 40
	ckpt_case
	reap
	[ $KW = 1 ] || break
	log "fault (e), try $try: $(sed 's/^clustertool: //' "$W/killwrite.log" | tail -1)"
done
if [ $KW = 0 ]; then
	killed=$(sed -n 's/.*unixnano=\([0-9]*\).*/\1/p' "$W/killwrite.log")
	dt=$(secs "$killed" "$END")
	tmp=$(find "$CKDIR" -maxdepth 1 -name '.latest.ckpt.tmp*' -printf '%f\n' | head -1)
	# A random suffix (os.CreateTemp) leaves a killed save's file for good;
	# the fixed name is replaced by the next save.
	fixed=1
	[[ $tmp =~ ^\.latest\.ckpt\.tmp-[0-9]+$ ]] && fixed=0
	# Resume from latest, and an uninterrupted run with the same flags.
	need_time "fault (e): resuming" 30
	run_bg mpirun_x 120 -np 2 --host hostA,hostB "${CK[@]}" --logs "$W/ck" --resume latest --summary "$W/ck/summary.json" >"$W/resume.log" 2>&1
	rrc=$?
	reap
	after=$(find "$CKDIR" -maxdepth 1 -name '.latest.ckpt.tmp*' -printf '%f ')
	run_bg mpirun_x 120 -np 2 --host hostA,hostB "${CK[@]}" --logs "$W/ck-ref" --summary "$W/ck-ref/summary.json" >"$W/ref.log" 2>&1
	frc=$?
	reap
	resumed=$(grep -m1 -oE 'resumed from .* at step [0-9]+ of [0-9]+' "$W/resume.log")
	got=$(grep -m1 -oE '"final_loss": [^,]*' "$W/ck/summary.json" 2>/dev/null)
	want=$(grep -m1 -oE '"final_loss": [^,]*' "$W/ck-ref/summary.json" 2>/dev/null)
	if [ $fixed = 1 ]; then
		clean="no temporary file left after the resumed run"
	else
		clean="(old random temporary names: the killed save's $tmp stays; not checked)"
		after=
	fi
	if [ "$RC" != 0 ] && le "$dt" 10 && [ -n "$tmp" ] && [ $rrc = 0 ] && [ $frc = 0 ] && [ -n "$resumed" ] &&
		[[ $resumed != *"at step 0 "* ]] && [ -n "$got" ] && [ "$got" = "$want" ] && [ -z "$after" ]; then
		pass "fault (e): $(sed 's/^clustertool: //' "$W/killwrite.log"); job exit $RC after $dt s; $resumed; resumed run's $got = the uninterrupted run's; $clean"
	else
		fail "fault (e): job exit $RC after $dt s, temporary file after the kill '${tmp}', resume rc=$rrc ('$resumed'), reference rc=$frc, final loss resumed '$got' vs uninterrupted '$want', temporary files after the resumed run: '${after}'"
		show "$W/killwrite.log" 5
		show "$W/resume.log" 15
	fi
else
	fail "fault (e): could not kill the job while a checkpoint was being written (clustertool killwrite exit $KW)"
	show "$W/killwrite.log" 5
	show "$LOG" 15
fi
