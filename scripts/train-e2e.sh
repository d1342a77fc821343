#!/usr/bin/env bash
# train-e2e.sh BIN NP: the training program end to end, the second half of
# `make test-train` (BIN holds train and clustertool; every mpirun goes
# through scripts/mpirun.sh, bounded by CLIPMPI_TIMEOUT, which the Makefile
# sets):
#   1. make run's job on NP ranks (global batch NP × 1024): held-out
#      recall@1 above 0.9 both ways; with --precision amp_bf16, recall@1
#      within 0.01 of fp32's both ways;
#   2. the same job on NP ranks, its ranks SIGKILLed after the epoch-3
#      checkpoint, resumed from it on 1 rank: metrics.csv continued across
#      the kill (each step and evaluation once), losses equal to the
#      uninterrupted run's to 1e-5 (float32);
#   3. the same on 1 rank (batch size NP·1024), resumed on NP ranks;
#   4. float16 .npy shards from gen-data: a run resumed from its epoch-2
#      checkpoint ends where the uninterrupted run ended;
#   5. on its final checkpoint: train eval on NP ranks gives the run's last
#      evaluation; train embed on NP ranks writes the features of 1 rank;
#      train export writes the heads;
#   6. a NaN row: the job exits non-zero, the error printed once (by the
#      rank that read the row).
# Work files in BIN/train-e2e.
set -uo pipefail
BIN=$1
NP=$2
MPIRUN="$(dirname "$0")/mpirun.sh"
d=$BIN/train-e2e
rm -rf "$d"
mkdir -p "$d"
fail() {
	echo "FAIL: $*"
	exit 1
}
# show LOG: the end of a log, on failure.
show() { tail -30 "$1" | sed 's/^/    /'; }

echo "== make run's job on $NP ranks: held-out recall@1 above 0.9"
RUN=(--progress lines)
"$MPIRUN" "$NP" "$BIN/train" "${RUN[@]}" --logs "$d/run" --summary "$d/run.json" >"$d/run.log" 2>&1 || { show "$d/run.log"; fail "make run's job"; }
"$BIN/clustertool" summary -file "$d/run.json" -world "$NP" -min-recall 0.9 || { show "$d/run.log"; fail "make run's recall"; }
echo "== make run PRECISION=amp_bf16: recall@1 within 0.01 of fp32's"
"$MPIRUN" "$NP" "$BIN/train" "${RUN[@]}" --precision amp_bf16 --logs "$d/runbf" --summary "$d/runbf.json" >"$d/runbf.log" 2>&1 || { show "$d/runbf.log"; fail "make run's job in amp_bf16"; }
python3 - "$d/run.json" "$d/runbf.json" <<'PY' || { show "$d/runbf.log"; fail "amp_bf16 recall"; }
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
for k in ("recall_i2t_at1", "recall_t2i_at1"):
    print(f"   {k}: fp32 {a[k]:.4f}, amp_bf16 {b[k]:.4f} ({b['gemm_path']})")
    if abs(a[k] - b[k]) > 0.01:
        sys.exit(f"{k} differs by more than 0.01")
PY

# descendants PID: every live descendant of PID.
descendants() {
	local c
	for c in $(pgrep -P "$1"); do
		echo "$c"
		descendants "$c"
	done
}

# killed W K: run make run's job on W ranks (its global batch of NP × 1024
# rows: batch size NP·1024/W) with logs in K, and SIGKILL its ranks once the
# epoch-3 checkpoint (step 48) is written and metrics.csv has gone past it.
killed() {
	local w=$1 k=$2 top ranks i
	"$MPIRUN" "$w" "$BIN/train" "${RUN[@]}" --batch-size $((NP * 1024 / w)) --logs "$k" >"$k.log" 2>&1 &
	top=$!
	for ((i = 0; i < 3000; i++)); do
		if [ -f "$k/checkpoints/epoch_3.ckpt" ] && grep -q '^train,5[0-9],' "$k/metrics.csv" 2>/dev/null; then
			break
		fi
		kill -0 "$top" 2>/dev/null || break
		sleep 0.05
	done
	# The ranks: the train processes among the launcher's descendants
	# (timeout, mpirun, the ranks; without CLIPMPI_TIMEOUT no timeout).
	ranks=$(for p in $(descendants "$top"); do [ "$(ps -o comm= -p "$p")" = train ] && echo "$p"; done)
	[ -n "$ranks" ] || { wait "$top"; show "$k.log"; fail "the run on $w ranks ended before it could be killed"; }
	# shellcheck disable=SC2086
	kill -KILL $ranks
	wait "$top"
	echo "   killed the $w ranks at step $(grep '^train,' "$k/metrics.csv" | tail -1 | cut -d, -f2) (pids $(echo $ranks))"
}

# elastic W W2: killed on W ranks, resumed from the epoch-3 checkpoint on W2;
# metrics.csv checked against make run's.
elastic() {
	local w=$1 w2=$2 k=$d/kill-$1-$2
	echo "== killed on $w ranks after the epoch-3 checkpoint, resumed on $w2: metrics.csv continued, losses as make run's"
	killed "$w" "$k"
	"$MPIRUN" "$w2" "$BIN/train" "${RUN[@]}" --batch-size $((NP * 1024 / w2)) --logs "$k" --resume "$k/checkpoints/epoch_3.ckpt" >"$k-resume.log" 2>&1 || { show "$k-resume.log"; fail "resuming on $w2 ranks"; }
	grep -E '^(resume|resumed from)' "$k-resume.log" | sed 's/^/   /'
	"$BIN/clustertool" metrics -got "$k/metrics.csv" -want "$d/run/metrics.csv" -tol 1e-5 -from 48 || fail "the resumed run's metrics.csv"
}
elastic "$NP" 1
elastic 1 "$NP"

echo "== $NP ranks on gen-data's float16 shards, 4 epochs; again resumed from epoch 2"
"$BIN/train" gen-data --out "$d/data" --rows 8192 --val-size 500 --shards 3 --dtype float16 >"$d/f16.log" || fail "gen-data"
args=(--train-data "$d/data/train" --val-data "$d/data/val" --batch-size 512 --epochs 4 --progress lines)
"$MPIRUN" "$NP" "$BIN/train" "${args[@]}" --logs "$d/a" --summary "$d/a.json" >>"$d/f16.log" 2>&1 || { show "$d/f16.log"; fail "training on float16 shards"; }
"$MPIRUN" "$NP" "$BIN/train" "${args[@]}" --logs "$d/b" --summary "$d/b.json" --resume "$d/a/checkpoints/epoch_2.ckpt" >>"$d/f16.log" 2>&1 || { show "$d/f16.log"; fail "resuming on float16 shards"; }
keys='"(final_loss|recall_i2t_at1|recall_t2i_at1)"'
grep -E "$keys" "$d/a.json" | tr -d ' \n'
echo
diff <(grep -E "$keys" "$d/a.json") <(grep -E "$keys" "$d/b.json") || fail "the resumed run ended elsewhere"
echo "   resumed run: same final loss and recall"

echo "== the float16 run's final checkpoint: eval, embed, export"
ck=$d/a/checkpoints/latest.ckpt
"$MPIRUN" "$NP" "$BIN/train" eval --resume "$ck" --val-data "$d/data/val" --summary "$d/eval.json" >"$d/eval.log" 2>&1 || { show "$d/eval.log"; fail "train eval"; }
"$BIN/clustertool" evalcmp -summary "$d/eval.json" -metrics "$d/a/metrics.csv" || fail "eval differs from the run's last evaluation"
for np in 1 "$NP"; do
	"$MPIRUN" "$np" "$BIN/train" embed --resume "$ck" --image-data "$d/data/val/image-00000.npy" --text-data "$d/data/val/text-00000.npy" \
		--out "$d/emb-$np" >"$d/embed-$np.log" 2>&1 || { show "$d/embed-$np.log"; fail "train embed on $np ranks"; }
done
for f in image_emb.npy text_emb.npy; do
	"$BIN/clustertool" npydiff -a "$d/emb-1/$f" -b "$d/emb-$NP/$f" -tol 1e-6 || fail "embed on $NP ranks differs from 1 rank"
done
"$BIN/train" export --resume "$ck" --out "$d/heads.safetensors" || fail "train export"

echo "== $NP ranks on shards with a NaN row: the job must fail, the cause printed once"
"$BIN/train" gen-data --out "$d/nan" --rows 2048 --val-size 100 --shards 2 --nan-row 2000 >/dev/null || fail "gen-data --nan-row"
if "$MPIRUN" "$NP" "$BIN/train" --train-data "$d/nan/train" --val-data "$d/nan/val" --batch-size 256 --logs "" >"$d/nan.log" 2>&1; then
	fail "training on a NaN row succeeded"
fi
n=$(grep -c 'holds NaN' "$d/nan.log")
grep -m1 'holds NaN' "$d/nan.log"
[ "$n" = 1 ] || { cat "$d/nan.log"; fail "the NaN row was reported $n times, want once"; }
