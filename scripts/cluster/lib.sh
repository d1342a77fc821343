# shellcheck shell=bash
# lib.sh: what the cluster harnesses (slurm.sh, multihost.sh) share:
# PASS/FAIL/SKIP bookkeeping, timing, one overall deadline, bounded
# commands, apt, and cleanup that runs on every exit.
#
# Every process a harness starts inherits CLIPMPI_CLUSTER_RUN=<name>-<pid>-<n>
# (<pid>: the harness's shell). At the end the harness kills whatever
# still carries it and fails if anything did, so a leftover rank, orted or
# daemon is a test failure, not a surprise for the next run. A run that
# was SIGKILLed cannot clean up; the next one (sweep_stale) ends the
# processes and deletes the namespaces of runs whose shell is gone.
#
# Signals: a long command runs in the background (run_bg) while the shell
# waits for it, so that SIGINT or SIGTERM runs the cleanup at once (bash
# runs a trap only once a foreground child has exited). The cleanup kills
# what the harness started, ignores further INT and TERM, and exits 130
# (INT) or 143 (TERM).

CL_T0=$(date +%s.%N)
CL_PASS=0
CL_FAIL=0
CL_SKIP=0
CL_NAME=${CL_NAME:-cluster}
# The whole run, cleanup aside, ends within CL_LIMIT seconds: every bounded
# step gets at most what is left (lim). The Makefile's timeout, a minute
# longer, leaves time for the cleanup.
CL_LIMIT=${CLIPMPI_CLUSTER_LIMIT:-360}
CL_END=$((SECONDS + CL_LIMIT))
CL_CLEANING=0
CL_INTERRUPTED=
CL_WORKDIR=
export CLIPMPI_CLUSTER_RUN=${CL_NAME}-$$-$RANDOM
CL_CLEANUP=()

now() { date +%s.%N; }
# elapsed T0 [T1]: seconds from T0 to T1 (default now), two decimals.
elapsed() { awk -v a="${2:-$(now)}" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
# le A B: A <= B as numbers.
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
log() { printf '[%6.1fs] %s\n' "$(elapsed "$CL_T0")" "$*"; }
pass() { CL_PASS=$((CL_PASS + 1)); echo "PASS: $*"; }
fail() { CL_FAIL=$((CL_FAIL + 1)); echo "FAIL: $*"; }
# skip WHAT: a part that cannot run here, counted in the summary line.
skip() { CL_SKIP=$((CL_SKIP + 1)); echo "SKIP: $*"; }

# skip_all REASON: nothing can run here; say why and succeed (under
# `make test`, scripts/skip.sh records the suite as skipped).
skip_all() {
	"$(dirname "${BASH_SOURCE[0]}")/../skip.sh" "$CL_NAME: $*"
	CL_SKIPPED=" (skipped: $*)"
	exit 0
}

# lim SECONDS: SECONDS (a whole number), or what is left of the overall
# deadline if that is less (at least 1). The cleanup is not limited.
lim() {
	local left=$((CL_END - SECONDS))
	if [ "$CL_CLEANING" = 1 ] || [ "$1" -le "$left" ]; then
		echo "$1"
	elif [ "$left" -ge 1 ]; then
		echo "$left"
	else
		echo 1
	fi
}

# need_time WHAT [SECONDS]: fail and end the run if less than SECONDS (5)
# of the overall deadline is left for WHAT.
need_time() {
	[ $((CL_END - SECONDS)) -ge "${2:-5}" ] && return 0
	fail "out of time: the harness's $CL_LIMIT s deadline leaves nothing for $1"
	exit 1
}

# run_bg CMD...: run CMD in the background and wait for it; its exit
# status. A signal to the harness interrupts the wait and runs the cleanup
# at once, which a foreground CMD would delay until it ends.
run_bg() {
	"$@" &
	wait $!
}

# on_exit CMD...: run CMD (one string, eval'ed) at exit, last registered first.
on_exit() { CL_CLEANUP+=("$*"); }

# workdir KIND: make the work directory W. It is removed at exit if the run
# passed, and kept (and named) if anything failed, the run was interrupted,
# or CLIPMPI_KEEP=1.
workdir() {
	W=$(mktemp -d "/tmp/clipmpi-$1.XXXXXX")
	CL_WORKDIR=$W
	log "work directory $W"
}

cl_signal() {
	CL_INTERRUPTED=" (interrupted by SIG$1)"
	echo "$CL_NAME: interrupted by SIG$1: cleaning up"
	exit "$2"
}

cl_exit() {
	local rc=$? i
	# A second INT or TERM must not cut the cleanup short.
	trap '' INT TERM
	trap - EXIT
	set +e
	CL_CLEANING=1
	stop_children
	for ((i = ${#CL_CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${CL_CLEANUP[i]}"
	done
	leftovers
	if [ -n "$CL_WORKDIR" ] && [ -d "$CL_WORKDIR" ]; then
		if [ "$CL_FAIL" = 0 ] && [ "$rc" = 0 ] && [ "${CLIPMPI_KEEP:-0}" != 1 ]; then
			rm -rf "$CL_WORKDIR"
		else
			echo "work directory kept: $CL_WORKDIR"
		fi
	fi
	local skipped=
	[ "$CL_SKIP" = 0 ] || skipped=", $CL_SKIP skipped"
	echo "$CL_NAME: $CL_PASS passed, $CL_FAIL failed$skipped ($(elapsed "$CL_T0") s)${CL_SKIPPED:-}${CL_INTERRUPTED:-}"
	[ "$rc" = 0 ] || exit "$rc"
	[ "$CL_FAIL" = 0 ] || exit 1
	exit 0
}
trap cl_exit EXIT
trap 'cl_signal INT 130' INT
trap 'cl_signal TERM 143' TERM

# descendants PID: set DESC to every live descendant of PID (from /proc,
# with builtins only, so that the scan starts no process).
descendants() {
	local root=$1 d line rest ppid queue p c
	local -A kids=()
	for d in /proc/[0-9]*; do
		{ read -r line <"$d/stat"; } 2>/dev/null || continue
		rest=${line##*) }
		[ "${rest%% *}" = Z ] && continue # exited, waiting for its parent
		rest=${rest#* }
		ppid=${rest%% *}
		kids[$ppid]+=" ${d#/proc/}"
	done
	DESC=()
	queue=("$root")
	while [ ${#queue[@]} -gt 0 ]; do
		p=${queue[0]}
		queue=("${queue[@]:1}")
		for c in ${kids[$p]:-}; do
			DESC+=("$c")
			queue+=("$c")
		done
	done
}

# kill_tree PID...: end PID and everything under it: SIGTERM, and SIGKILL
# for what is still there 2 s later (mpirun with a lost daemon ignores a
# single SIGTERM).
kill_tree() {
	local p all=()
	for p in "$@"; do
		descendants "$p"
		all+=("$p" "${DESC[@]}")
	done
	[ ${#all[@]} = 0 ] && return 0
	kill -TERM "${all[@]}" 2>/dev/null
	wait_until 2 gone "${all[@]}" && return 0
	for p in "$@"; do
		descendants "$p"
		all+=("${DESC[@]}")
	done
	kill -KILL "${all[@]}" 2>/dev/null
	wait_until 3 gone "${all[@]}"
}

# gone PID...: none of them is running (a zombie counts as gone).
gone() {
	local p s
	for p in "$@"; do
		{ read -r s <"/proc/$p/stat"; } 2>/dev/null || continue
		s=${s##*) }
		[ "${s%% *}" = Z ] || return 1
	done
	return 0
}

# stop_children: end whatever the harness's shell still has running under
# it (a background job, or the command a signal interrupted).
stop_children() {
	descendants $$
	[ ${#DESC[@]} = 0 ] && return
	local n=${#DESC[@]}
	kill_tree "${DESC[@]}"
	log "stopped $n process(es) the harness still had running"
}

# tagged_pids [TAG]: set TAGGED to the processes (other than this shell)
# whose environment carries CLIPMPI_CLUSTER_RUN=TAG (default: this run's).
# Builtins only, so that the scan itself starts no process that carries it.
tagged_pids() {
	local want=CLIPMPI_CLUSTER_RUN=${1:-$CLIPMPI_CLUSTER_RUN} d kv
	TAGGED=()
	for d in /proc/[0-9]*; do
		[ "${d#/proc/}" = $$ ] && continue
		{
			while IFS= read -r -d '' kv; do
				if [ "$kv" = "$want" ]; then
					TAGGED+=("${d#/proc/}")
					break
				fi
			done <"$d/environ"
		} 2>/dev/null
	done
}

# leftovers: kill any process this run started that is still alive (a
# failure of the cleanup above) and count it as a failure.
leftovers() {
	tagged_pids
	[ ${#TAGGED[@]} = 0 ] && return
	local list
	list=$(ps -o pid=,args= -p "$(IFS=,; echo "${TAGGED[*]}")" 2>/dev/null | cut -c1-100 | tr '\n' ';')
	kill -9 "${TAGGED[@]}" 2>/dev/null
	fail "cleanup: processes of this run were still alive (killed now): $list"
}

# harness_alive PID: PID is a running cluster harness (slurm.sh, multihost.sh
# or benchnet.sh).
harness_alive() {
	local a
	{
		while IFS= read -r -d '' a; do
			case $a in */slurm.sh | */multihost.sh | */benchnet.sh | slurm.sh | multihost.sh | benchnet.sh) return 0 ;; esac
		done <"/proc/$1/cmdline"
	} 2>/dev/null
	return 1
}

# sweep_stale: end what runs of the harnesses that were killed without
# cleaning up (SIGKILL, a crash) left: processes carrying the tag of a run
# whose shell is gone, then network namespaces named after such a shell.
sweep_stale() {
	local d kv v ns pid stale=() tags=()
	for d in /proc/[0-9]*; do
		{
			while IFS= read -r -d '' kv; do
				case $kv in CLIPMPI_CLUSTER_RUN=*) ;; *) continue ;; esac
				v=${kv#CLIPMPI_CLUSTER_RUN=}
				if [ "$v" != "$CLIPMPI_CLUSTER_RUN" ] && [[ $v =~ -([0-9]+)-[0-9]+$ ]] && ! harness_alive "${BASH_REMATCH[1]}"; then
					stale+=("${d#/proc/}")
					[[ " ${tags[*]} " == *" $v "* ]] || tags+=("$v")
				fi
				break
			done <"$d/environ"
		} 2>/dev/null
	done
	if [ ${#stale[@]} -gt 0 ]; then
		kill -9 "${stale[@]}" 2>/dev/null
		wait_until 5 gone "${stale[@]}"
		log "killed ${#stale[@]} process(es) left by earlier runs that were killed (${tags[*]})"
	fi
	command -v ip >/dev/null || return 0
	for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1); do
		[[ $ns =~ ^cm([0-9]+)(r[0-9]+)?-(head|hostA|hostB|probe)$ ]] || continue
		pid=${BASH_REMATCH[1]}
		[ "$pid" = $$ ] && continue
		harness_alive "$pid" && continue
		ns_clear 5 "$ns" || log "processes in $ns survive SIGKILL"
		ip netns del "$ns" 2>/dev/null && log "deleted namespace $ns of an earlier run that was killed (pid $pid)"
	done
}

# wait_until SECONDS CMD...: poll CMD every 0.1 s until it succeeds; 1 on
# timeout. SECONDS (a whole number) is capped by the overall deadline.
wait_until() {
	local end
	end=$(awk -v a="$(now)" -v s="$(lim "$1")" 'BEGIN { printf "%.2f", a + s }')
	shift
	until "$@"; do
		le "$end" "$(now)" && return 1
		sleep 0.1
	done
}

# pkg_installed PKG...: all of them installed.
pkg_installed() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
	done
}

# apt_install PKG...: install what is missing, waiting up to 60 s for
# another apt to finish and 180 s for each apt-get; skips the whole harness
# when apt cannot (not Debian, no network).
apt_install() {
	pkg_installed "$@" && return 0
	command -v apt-get >/dev/null || skip_all "apt-get unavailable: install $* by hand"
	export DEBIAN_FRONTEND=noninteractive
	local lock=(-o DPkg::Lock::Timeout=60) opts=(-y -qq --no-install-recommends)
	log "apt-get install $*"
	if ! run_bg timeout "$(lim 180)" apt-get "${lock[@]}" "${opts[@]}" install "$@" >"$W/apt.log" 2>&1; then
		run_bg timeout "$(lim 180)" apt-get "${lock[@]}" -qq update >>"$W/apt.log" 2>&1
		run_bg timeout "$(lim 180)" apt-get "${lock[@]}" "${opts[@]}" install "$@" >>"$W/apt.log" 2>&1 ||
			{ tail -5 "$W/apt.log"; skip_all "apt unavailable: apt-get install $* failed (see above)"; }
	fi
}

# show FILE [N]: the last N (40) lines of FILE, indented.
show() { tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    | /'; }

# ---- two hosts in network namespaces (README, "Clusters: Slurm and several hosts")
#
#   netns $NS_HEAD: br0 $SUB.254 (mpirun, slurmctld)
#     |-- vpA ===veth=== veth0 $SUB.1  netns $NS_A ("hostA")
#     `-- vpB ===veth=== veth0 $SUB.2  netns $NS_B ("hostB")
#
# Nothing is added to the root namespace. The names carry this shell's pid
# (so that sweep_stale can tell a dead run's) and a random number (so that
# a reused pid does not meet a namespace left by a killed run). $W/hosts
# names the three.
NET_ID=cm$$r$RANDOM
NS_HEAD=$NET_ID-head NS_A=$NET_ID-hostA NS_B=$NET_ID-hostB
NSS=("$NS_HEAD" "$NS_A" "$NS_B")
SUB=10.231.77

# net_probe: can this machine make a namespace and a veth pair? If not,
# NET_SKIP says why.
net_probe() {
	local err
	if ! command -v ip >/dev/null; then
		NET_SKIP="ip (iproute2) not found"
		return 1
	fi
	if ! err=$(ip netns add "$NET_ID-probe" 2>&1); then
		NET_SKIP="ip netns unsupported here: $err"
		return 1
	fi
	if ! err=$(ip -n "$NET_ID-probe" link add p0 type veth peer name p1 2>&1); then
		ip netns del "$NET_ID-probe"
		NET_SKIP="veth pairs unsupported here: $err"
		return 1
	fi
	ip netns del "$NET_ID-probe"
}

# ns_kill NS...: SIGKILL every process in the namespaces (deleting a
# namespace does not end them); 1 if there was any.
ns_kill() {
	local ns pids any=0
	for ns in "$@"; do
		pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
		if [ -n "${pids// /}" ]; then
			any=1
			kill -9 $pids 2>/dev/null
		fi
	done
	return $any
}

# ns_clear SECONDS NS...: ns_kill until the namespaces hold no process; 1
# if some are still there after SECONDS.
ns_clear() {
	local s=$1
	shift
	wait_until "$s" ns_kill "$@"
}

net_up() {
	local ns h i=1
	for ns in "${NSS[@]}"; do
		ip netns add "$ns" && ip -n "$ns" link set lo up || { fail "creating namespace $ns"; return 1; }
	done
	ip -n "$NS_HEAD" link add br0 type bridge &&
		ip -n "$NS_HEAD" addr add "$SUB.254/24" dev br0 &&
		ip -n "$NS_HEAD" link set br0 up || { fail "creating the bridge"; return 1; }
	for h in A B; do
		ns=$NET_ID-host$h
		ip link add "vp$h" netns "$NS_HEAD" type veth peer name veth0 netns "$ns" &&
			ip -n "$NS_HEAD" link set "vp$h" master br0 &&
			ip -n "$NS_HEAD" link set "vp$h" up &&
			ip -n "$ns" addr add "$SUB.$i/24" dev veth0 &&
			ip -n "$ns" link set veth0 up || { fail "creating the veth pair to host$h"; return 1; }
		i=$((i + 1))
	done
	printf '127.0.0.1 localhost\n%s.254 head\n%s.1 hostA\n%s.2 hostB\n' "$SUB" "$SUB" "$SUB" >"$W/hosts"
	log "namespaces $NS_HEAD (bridge $SUB.254), $NS_A ($SUB.1), $NS_B ($SUB.2)"
}

# net_down: kill what runs in the namespaces and wait until none holds a
# process (a process keeps a deleted namespace, and its devices, alive),
# delete the veth pairs and the bridge and check that only lo is left,
# delete the namespaces and check that they are gone.
net_down() {
	local ns h links bad= left
	if ! ns_clear 5 "${NSS[@]}"; then
		for ns in "${NSS[@]}"; do
			left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
			[ -z "$left" ] || bad+=" $ns: pids $left;"
		done
		fail "cleanup: processes in the namespaces survive SIGKILL for 5 s:$bad"
		bad=
	fi
	for h in A B; do
		ip -n "$NS_HEAD" link del "vp$h" 2>/dev/null
	done
	ip -n "$NS_HEAD" link del br0 2>/dev/null
	for ns in "${NSS[@]}"; do
		[ -e "/run/netns/$ns" ] || continue
		links=$(ip -n "$ns" -o link show 2>/dev/null | awk -F': ' '$2 != "lo" { sub(/@.*/, "", $2); print $2 }' | tr '\n' ' ')
		[ -z "$links" ] || bad+=" $ns: $links;"
	done
	for ns in "${NSS[@]}"; do
		[ -e "/run/netns/$ns" ] && ip netns del "$ns"
	done
	left=$(ip netns list | grep -F "$NET_ID-" | tr '\n' ' ')
	if [ -n "$bad" ]; then
		fail "cleanup: devices left after deleting the veth pairs and the bridge:$bad"
	fi
	if [ -n "$left" ]; then
		fail "cleanup: namespaces left: $left"
	elif [ -z "$bad" ]; then
		log "namespaces, veth pairs and bridge removed"
	fi
}

# nsx NS HOSTNAME CMD...: run CMD in NS's network namespace with its own
# host name and $W/hosts as /etc/hosts, keeping the rest of the system
# (nsenter, not ip netns exec, which remounts /sys and hides the cgroup
# file system that slurmd needs).
nsx() {
	local ns=$1 hn=$2
	shift 2
	nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private /bin/bash -c \
		'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"' "$W/hosts" "$hn" "$@"
}

# ---- MPI across the namespaces
#
# mpi_hosts: the rsh agent ($W/nsrsh: mpirun calls "nsrsh HOST orted
# ARGS..." and it runs that in HOST's namespace with HOST as its host
# name) and Open MPI's settings for the two hosts: daemons through the
# agent, TCP only on the test subnet, the short keepalive that turns a cut
# link into an error (README, "Clusters: Slurm and several hosts"), one
# BLAS thread per rank, and session directories and shared memory in the work directory.
mpi_hosts() {
	cat >"$W/nsrsh" <<NSRSH
#!/bin/sh
host=\$1; shift
case \$host in
hostA|$SUB.1) ns=$NS_A; hn=hostA ;;
hostB|$SUB.2) ns=$NS_B; hn=hostB ;;
*) echo "nsrsh: unknown host \$host" >&2; exit 255 ;;
esac
exec ip netns exec "\$ns" unshare --uts /bin/sh -c 'hostname "\$0"; exec /bin/sh -c "\$1"' "\$hn" "\$*"
NSRSH
	chmod +x "$W/nsrsh"
	export OMPI_MCA_plm_rsh_agent=$W/nsrsh
	export OMPI_MCA_oob_tcp_if_include=$SUB.0/24 OMPI_MCA_btl_tcp_if_include=$SUB.0/24
	export OMPI_MCA_oob_tcp_keepalive_time=5 OMPI_MCA_oob_tcp_keepalive_intvl=2 OMPI_MCA_oob_tcp_keepalive_probes=3
	export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
	export TMPDIR=$W/tmp OMPI_MCA_btl_vader_backing_directory=$W/shm
	mkdir -p "$TMPDIR" "$OMPI_MCA_btl_vader_backing_directory"
}

# mpirun_ns LIMIT ARGS...: mpirun in head (private /etc/hosts naming the
# hosts, host name "head"), TCP only, bounded by LIMIT seconds or what is
# left of the run's (then SIGKILL 5 s later), under the command words in
# the array MPIRUN_PREFIX if set (e.g. nice -n -10). Needs mpi_hosts first.
mpirun_ns() {
	local limit
	limit=$(lim "$1")
	shift
	timeout -k 5 "$limit" "${MPIRUN_PREFIX[@]}" ip netns exec "$NS_HEAD" unshare --uts --mount --propagation private /bin/bash -c \
		'mount --bind "$0" /etc/hosts && hostname head && exec "$@"' "$W/hosts" \
		mpirun --allow-run-as-root --bind-to none --mca pml ob1 --mca btl tcp,self \
		-x OPENBLAS_NUM_THREADS -x TMPDIR "$@"
}
