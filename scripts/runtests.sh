#!/usr/bin/env bash
# runtests.sh SUITE...: run each SUITE (a make target) in turn, keep going
# after a failure, and end with the count line
#   make test: N passed, M failed, K skipped (of T suites, S s)
# It exits non-zero if any suite failed.
#
# What is counted: suites (make targets), not the tests inside them.
#   passed   the target exited 0 and did not say it skipped;
#   failed   the target exited non-zero (or was stopped by a signal);
#   skipped  the target exited 0 but said it cannot run here: it appended a
#            reason to the file named by $CLIPMPI_SKIP_FILE (scripts/skip.sh
#            REASON does this). Under CI=true a skipped suite counts as
#            failed: CI must run everything.
# A suite that skips only some of its parts (a 1-CPU machine, say) passes;
# its own output says what it skipped.
set -uo pipefail
make=${MAKE:-make}
ci=0
case "${CI:-}" in true | 1 | yes) ci=1 ;; esac

tmp=$(mktemp -d /tmp/clipmpi-runtests.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
trap 'echo; echo "make test: interrupted"; exit 130' INT
trap 'echo; echo "make test: terminated"; exit 143' TERM

t0=$SECONDS
pass=0 failn=0 skipn=0
results=()
for s in "$@"; do
	echo
	echo "######## $s"
	skipfile=$tmp/$s.skip
	: >"$skipfile"
	t=$SECONDS
	# $make unquoted: MAKE may carry words (make -f FILE).
	# shellcheck disable=SC2086
	CLIPMPI_SKIP_FILE=$skipfile $make --no-print-directory "$s"
	rc=$?
	dt=$((SECONDS - t))
	reason=$(tr '\n' ';' <"$skipfile" | sed 's/;$//; s/;/; /g')
	if [ "$rc" != 0 ]; then
		failn=$((failn + 1))
		results+=("FAIL  $s (exit $rc, ${dt} s)")
	elif [ -n "$reason" ] && [ "$ci" = 1 ]; then
		failn=$((failn + 1))
		results+=("FAIL  $s (skipped, a failure under CI=true: $reason)")
	elif [ -n "$reason" ]; then
		skipn=$((skipn + 1))
		results+=("SKIP  $s ($reason)")
	else
		pass=$((pass + 1))
		results+=("PASS  $s (${dt} s)")
	fi
done

echo
echo "######## summary"
printf '%s\n' "${results[@]}"
echo "make test: $pass passed, $failn failed, $skipn skipped (of $# suites, $((SECONDS - t0)) s)"
[ "$failn" = 0 ]
