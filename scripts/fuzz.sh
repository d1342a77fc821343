#!/usr/bin/env bash
# fuzz.sh FUZZTIME [PKG:TARGET...]: run each native Go fuzz target for
# FUZZTIME (go test -fuzz; the corpus it builds stays in the Go cache, the
# seed corpora in PKG/testdata/fuzz/TARGET are what plain go test runs),
# then print a table: executions, new interesting inputs, result. A target
# that fails stops nothing: the others still run, and the script exits
# non-zero; go test has written the failing input to
# PKG/testdata/fuzz/TARGET/ (add it to the commit with the fix). New
# interesting inputs are minimized for 5 s at most: longer starves the
# targets whose executions are slow (FuzzCheckpoint ran 6119 inputs in 3
# minutes with 30 s).
set -uo pipefail
time=${1:-30s}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(slurm:FuzzExpandHostlist slurm:FuzzExpandTasksPerNode clip:FuzzCheckpoint clip:FuzzNpy loss:FuzzLoss)
go=${GO:-go}
log=$(mktemp -d /tmp/clipmpi-fuzz.XXXXXX)
trap 'rm -rf "$log"' EXIT
rows=() failed=0
for t in "${targets[@]}"; do
	pkg=${t%%:*} fn=${t#*:}
	echo "== $fn (./$pkg), $time"
	$go test -run '^$' -fuzz "^$fn\$" -fuzztime "$time" -fuzzminimizetime 5s "./$pkg" >"$log/$fn" 2>&1
	rc=$?
	last=$(grep -E '^fuzz: elapsed' "$log/$fn" | tail -1)
	execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
	new=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
	if [ "$rc" = 0 ]; then
		res=ok
	else
		res=FAILED failed=$((failed + 1))
		grep -vE '^fuzz: elapsed' "$log/$fn" | head -40
	fi
	echo "   $last"
	rows+=("$(printf '%-24s %-6s %12s %8s  %s' "$fn" "$pkg" "${execs:-?}" "${new:-?}" "$res")")
done
echo
printf '%-24s %-6s %12s %8s  %s\n' target pkg executions new result
printf '%s\n' "${rows[@]}"
[ "$failed" = 0 ]
