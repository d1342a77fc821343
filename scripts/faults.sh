#!/usr/bin/env bash
# faults.sh [BIN]: the faults that only one rank meets, under mpirun -np 2
# and -np 3 on this machine. Each case injects one fault on one rank only
# and passes when the job exits non-zero within BOUND (10) seconds of the
# fault, with the cause printed exactly once, naming the rank:
#
#   slurm-init  rank R's launch environment disagrees with MPI (an MPMD
#               launch gives it RANK=0): slurm.Init fails on that rank only,
#               while the others go on into the first collective (before
#               mpi.Fail the job hung until the launcher's time limit);
#   data        rank R's copy of the training set holds NaN in the rows R
#               reads at step 5 of the first epoch, and only there
#               (clustertool nanrows): the error is met mid-epoch by R alone;
#   checkpoint  --resume names a checkpoint that rank 0, the rank that
#               reads it, cannot open (the path is missing on its node);
#   ring-clip, ring-siglip-bidir, ring-siglip-shift
#               rank R's next non-blocking send/receive of the ring fails to
#               start (faultprog -fault isendrecv);
#   panic       rank R panics (faultprog -fault panic).
#
# R is the last rank. The time is taken from the launch for the faults of
# the training program (slurm-init, data, checkpoint: a run of a few
# seconds) and from the injection (faultprog prints its time) for the
# others. Every launch is bounded by
# CLIPMPI_TIMEOUT (default 60 s), so a hang fails instead of hanging.
# BIN holds train, faultprog and clustertool (default ./bin); the
# Makefile's test-faults builds them. Ends with a table of the measured times; exits non-zero if
# any case failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=$(cd "${1:-$here/../bin}" && pwd)
MPIRUN=$here/mpirun.sh
BOUND=${FAULT_BOUND:-10}
NPS=${FAULT_NPS:-2 3}
export CLIPMPI_TIMEOUT=${CLIPMPI_TIMEOUT:-60}
# MPMD launches of 3 ranks on fewer cores: mpirun.sh only oversubscribes
# when its own NP (the first app context's) exceeds the cores.
export OMPI_MCA_rmaps_base_oversubscribe=1
for b in train faultprog clustertool; do
	[ -x "$BIN/$b" ] || { echo "faults.sh: $BIN/$b is missing (make test-faults builds it)"; exit 2; }
done
W=$(mktemp -d /tmp/clipmpi-faults.XXXXXX)
trap 'rm -rf "$W"' EXIT

now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

failures=0
rows=()

# check NAME NP FROM KEY PATTERN -- MPIRUN-ARGS...: launch, then check the
# exit status, the time from FROM (launch or injection) and that exactly
# one line of output matches PATTERN and exactly one contains KEY.
check() {
	local name=$1 np=$2 from=$3 key=$4 pattern=$5
	shift 6
	local log=$W/$name-np$np.log t0 t1 rc t inj dt n k line
	t0=$(now)
	"$MPIRUN" "$@" >"$log" 2>&1
	rc=$?
	t1=$(now)
	t=$t0
	if [ "$from" = injection ]; then
		inj=$(grep -m1 -oE 'injects [a-z]+ at unixnano=[0-9]+' "$log" | sed 's/.*=//')
		t=${inj:-$t1}
	fi
	dt=$(secs "$t" "$t1")
	n=$(grep -cE "$pattern" "$log")
	k=$(grep -cF -- "$key" "$log")
	line=$(grep -m1 -E "$pattern" "$log" | cut -c1-200)
	if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 137 ] &&
		awk -v d="$dt" -v b="$BOUND" 'BEGIN { exit !(d <= b) }' && [ "$n" = 1 ] && [ "$k" = 1 ]; then
		echo "PASS  $name np=$np: exit $rc $dt s after the $from (bound $BOUND s): $line"
		rows+=("$(printf '%-18s %3s %5s %8s' "$name" "$np" "$rc" "$dt")")
	else
		echo "FAIL  $name np=$np: exit $rc $dt s after the $from; want non-zero within $BOUND s and one line matching '$pattern' ($n), '$key' printed once ($k)"
		sed 's/^/    | /' "$log" | tail -40
		rows+=("$(printf '%-18s %3s %5s %8s  FAILED' "$name" "$np" "$rc" "$dt")")
		failures=$((failures + 1))
	fi
}

# Data: float32 shards for training and held-out rows, and a checkpoint.
"$BIN/train" gen-data --out "$W/data" --rows 2048 --val-size 256 --shards 2 >"$W/gendata.log" 2>&1 ||
	{ cat "$W/gendata.log"; exit 1; }
TR=("$BIN/train" --train-data "$W/data/train" --val-data "$W/data/val" --batch-size 64 --epochs 1 --progress lines)
CLIPMPI_TIMEOUT=120 "$MPIRUN" 2 "${TR[@]}" --logs "$W/ck" >"$W/ck.log" 2>&1 ||
	{ echo "faults.sh: the run that writes the checkpoint failed"; tail -20 "$W/ck.log"; exit 1; }
CKPT=$W/ck/checkpoints/latest.ckpt
FP=("$BIN/faultprog" -seconds 30 -b 32 -d 16 -fault-after 1s)

for np in $NPS; do
	r=$((np - 1))
	# MPMD: ranks 0..r-1 normal, rank r with the fault.
	others=()
	[ "$r" -gt 1 ] && others=(: -np $((r - 1)) "${TR[@]}" --logs "")

	check slurm-init "$np" launch "the launch environment says" "^mpi: rank $r of $np: train: slurm: the launch environment says rank 0 of $np" -- \
		1 "${TR[@]}" --logs "" "${others[@]}" : -np 1 env RANK=0 "${TR[@]}" --logs ""

	"$BIN/clustertool" nanrows -train "$W/data/train" -out "$W" -world "$np" -rank "$r" -batch 64 -step 5 >"$W/nanrows.log" 2>&1 ||
		{ cat "$W/nanrows.log"; exit 1; }
	nan=(--train-data "$W/image.npy,$W/text.npy")
	check data "$np" launch "bad data" "^train: rank $r: clip: bad data: .*image.npy: row [0-9]+ of the image embeddings holds NaN" -- \
		"$r" "${TR[@]}" --logs "" : -np 1 "${TR[@]}" "${nan[@]}" --logs ""

	check checkpoint "$np" launch "bad checkpoint" "^train: rank 0: clip: bad checkpoint: .*missing.ckpt" -- \
		1 "${TR[@]}" --logs "" --epochs 2 --resume "$W/missing.ckpt" : -np $((np - 1)) "${TR[@]}" --logs "" --epochs 2 --resume "$CKPT"

	check ring-clip "$np" injection "injected communication failure" "^mpi: rank $r of $np: loss: ring shift of text" -- \
		"$np" "${FP[@]}" -algo ring -fault isendrecv -fault-rank "$r"
	for impl in bidir shift; do
		check "ring-siglip-$impl" "$np" injection "injected communication failure" "^mpi: rank $r of $np: loss: SigLIP ring shift" -- \
			"$np" "${FP[@]}" -loss siglip -algo "$impl" -fault isendrecv -fault-rank "$r"
	done

	check panic "$np" injection "injected panic" "^mpi: rank $r of $np: panic: faultprog: injected panic at step" -- \
		"$np" "${FP[@]}" -fault panic -fault-rank "$r"
done

echo
echo "fault               np  exit  seconds (after the fault; bound $BOUND s)"
printf '%s\n' "${rows[@]}"
if [ "$failures" != 0 ]; then
	echo "faults.sh: $failures case(s) failed"
	exit 1
fi
echo "faults.sh: every fault ended the job within $BOUND s, its cause printed once"
