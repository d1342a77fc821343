# shellcheck shell=bash
# lib.sh: what the cluster harnesses (slurm.sh, multihost.sh) share:
# PASS/FAIL bookkeeping, timing, bounded commands, apt, and cleanup that
# runs on every exit.
#
# Every process a harness starts inherits CLIPMPI_CLUSTER_RUN=<id>; at the
# end the harness kills whatever still carries it and fails if anything
# did, so a leftover rank, orted or daemon is a test failure, not a
# surprise for the next run.

CL_T0=$(date +%s.%N)
CL_PASS=0
CL_FAIL=0
CL_NAME=${CL_NAME:-cluster}
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

# skip_all REASON: nothing can run here; say why and succeed.
skip_all() {
	echo "SKIP: $CL_NAME: $*"
	echo "$CL_NAME: 0 passed, 0 failed (skipped: $*)"
	exit 0
}

# on_exit CMD...: run CMD (one string, eval'ed) at exit, last registered first.
on_exit() { CL_CLEANUP+=("$*"); }

cl_exit() {
	local rc=$? i
	trap - EXIT INT TERM
	set +e
	for ((i = ${#CL_CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${CL_CLEANUP[i]}"
	done
	leftovers
	echo "$CL_NAME: $CL_PASS passed, $CL_FAIL failed ($(elapsed "$CL_T0") s)"
	[ "$CL_FAIL" = 0 ] && [ "$rc" = 0 ] || exit 1
	exit 0
}
trap cl_exit EXIT
trap 'echo "$CL_NAME: interrupted"; exit 130' INT TERM

# tagged_pids: set TAGGED to the processes (other than this shell) whose
# environment carries this run's CLIPMPI_CLUSTER_RUN. Builtins only, so
# that the scan itself starts no process that carries it.
tagged_pids() {
	TAGGED=()
	local d kv
	for d in /proc/[0-9]*; do
		[ "${d#/proc/}" = $$ ] && continue
		{
			while IFS= read -r -d '' kv; do
				if [ "$kv" = "CLIPMPI_CLUSTER_RUN=$CLIPMPI_CLUSTER_RUN" ]; then
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

# wait_until SECONDS CMD...: poll CMD every 0.1 s until it succeeds; 1 on timeout.
wait_until() {
	local end
	end=$(awk -v a="$(now)" -v s="$1" 'BEGIN { printf "%.2f", a + s }')
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

# apt_install PKG...: install what is missing, waiting for another apt to
# finish; skips the whole harness when apt cannot (not Debian, no network).
apt_install() {
	pkg_installed "$@" && return 0
	command -v apt-get >/dev/null || skip_all "apt-get unavailable: install $* by hand"
	export DEBIAN_FRONTEND=noninteractive
	local opts=(-o DPkg::Lock::Timeout=300 -y -qq --no-install-recommends)
	log "apt-get install $*"
	if ! apt-get "${opts[@]}" install "$@" >"$W/apt.log" 2>&1; then
		apt-get -o DPkg::Lock::Timeout=300 -qq update >>"$W/apt.log" 2>&1
		apt-get "${opts[@]}" install "$@" >>"$W/apt.log" 2>&1 ||
			{ tail -5 "$W/apt.log"; skip_all "apt unavailable: apt-get install $* failed (see above)"; }
	fi
}

# show FILE [N]: the last N (40) lines of FILE, indented.
show() { tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    | /'; }
