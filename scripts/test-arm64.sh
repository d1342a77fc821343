#!/usr/bin/env bash
# test-arm64.sh: the arm64 port, checked from an amd64 machine.
#
#  1. Installs, when absent, Debian's cross compiler and qemu-user
#     (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user-static).
#  2. Cross-builds and vets every package and command for GOARCH=arm64 with
#     cgo on (the C kernels of loss compile for AArch64: NEON).
#  3. Cross-builds with the openblas tag against Debian's arm64 OpenBLAS
#     (libopenblas-dev:arm64, multiarch), installing it when that adds
#     packages without upgrading or removing any; otherwise says why not.
#     The mpi tag is not cross-built: libopenmpi-dev:arm64 must match the
#     amd64 versions of every Multi-Arch: same library it pulls in
#     (systemd's, OpenSSL's, ...), and apt resolves that on a machine that is
#     not fully up to date by upgrading them and removing Open MPI, Slurm
#     and munge for amd64.
#  4. Runs the unit tests of blas, loss and clip (no tags: gonum's GEMM, the
#     C kernels) under qemu-aarch64-static -L /usr/aarch64-linux-gnu, with
#     -test.short and without the Example functions (clip's trains for
#     minutes under emulation; the full suites run natively in `make unit`),
#     and blas's again with the openblas tag when it was built. The glibc
#     of the cross sysroot is pinned (LD_LIBRARY_PATH): with Debian's
#     multiarch libc6:arm64 installed too (libopenblas-dev:arm64 pulls it
#     in), the sysroot's ld.so would load that libc, another build, and the
#     program hangs before main.
# Other hosts skip (scripts/skip.sh) saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
go=${GO:-go}
here=$(dirname "$0")

host=$($go env GOHOSTARCH)
if [ "$host" != amd64 ]; then
	"$here/skip.sh" "test-arm64 cross-builds from amd64; this host is $host (its own arch runs the unit suite)"
	exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then
	sudo=(sudo -n)
fi
apt_ok() { command -v apt-get >/dev/null && command -v dpkg-query >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" timeout 180 apt-get -o DPkg::Lock::Timeout=60 update -qq
	"${sudo[@]}" timeout 300 apt-get -o DPkg::Lock::Timeout=60 install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. The cross compiler and qemu.
need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static; do
	installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	if ! apt_ok; then
		"$here/skip.sh" "needs ${need[*]} (Debian/Ubuntu packages) and no apt-get as root or sudo to install them"
		exit 0
	fi
	echo "test-arm64: installing ${need[*]}"
	apt_install "${need[@]}"
fi
cross=(env CGO_ENABLED=1 GOARCH=arm64 CC=aarch64-linux-gnu-gcc)

# 2. Every package and command, cgo on.
echo "== GOARCH=arm64 CGO_ENABLED=1 go build ./... && go vet ./..."
"${cross[@]}" $go build ./...
"${cross[@]}" $go vet ./...

# 3. The openblas tag against the arm64 OpenBLAS.
if ! installed libopenblas-dev:arm64 && apt_ok; then
	added=0
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then
		"${sudo[@]}" dpkg --add-architecture arm64
		"${sudo[@]}" timeout 180 apt-get -o DPkg::Lock::Timeout=60 update -qq || true
		added=1
	fi
	sim=$(apt-get -s install --no-install-recommends libopenblas-dev:arm64 2>&1 || true)
	if grep -q '^Inst' <<<"$sim" && ! grep -qE '^(Remv|Inst [^ ]+ \[)' <<<"$sim"; then
		echo "test-arm64: installing libopenblas-dev:arm64"
		apt_install libopenblas-dev:arm64
	else
		echo "test-arm64: not installing libopenblas-dev:arm64: apt would upgrade or remove installed packages"
		if [ "$added" = 1 ]; then
			"${sudo[@]}" dpkg --remove-architecture arm64 || true
		fi
	fi
fi
if installed libopenblas-dev:arm64; then
	echo "== GOARCH=arm64 go build -tags openblas ./... (Debian's arm64 OpenBLAS)"
	PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig "${cross[@]}" $go build -tags openblas ./...
else
	echo "SKIP: -tags openblas for arm64: libopenblas-dev:arm64 is not installed"
fi
echo "   (-tags mpi is not cross-built: see the comment at the top of scripts/test-arm64.sh)"

# 4. Unit tests under qemu-user.
out=bin/arm64
mkdir -p "$out"
runs=(blas loss clip)
if installed libopenblas-dev:arm64; then
	runs+=(blas:openblas)
fi
for run in "${runs[@]}"; do
	pkg=${run%%:*} tags=
	[ "$run" = "$pkg" ] || tags=${run#*:}
	name=$pkg${tags:+-$tags}
	PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig "${cross[@]}" $go test -c ${tags:+-tags $tags} -o "$out/$name.test" "./$pkg"
	echo "== qemu-aarch64-static $name.test -test.short -test.run '^Test'"
	log=$out/$name.log
	# SIGKILL: qemu-user does not act on SIGTERM while the guest spins.
	if (cd "$pkg" && OPENBLAS_NUM_THREADS=1 timeout -s KILL 900 qemu-aarch64-static -L /usr/aarch64-linux-gnu \
		-E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib "../$out/$name.test" \
		-test.short -test.run '^Test' -test.v >"../$log" 2>&1); then
		echo "   $(grep -c '^--- PASS' "$log") tests passed, $(grep -c '^--- SKIP' "$log") skipped: $(tail -1 "$log")"
	else
		grep -E '^(--- FAIL|FAIL|panic)|_test.go:[0-9]+:' "$log" | head -40
		tail -5 "$log"
		echo "test-arm64: $name failed under qemu-aarch64-static (log: $log)"
		exit 1
	fi
done
# Each skip's reason (the line before its --- SKIP).
grep -h -B1 -E '^--- SKIP' "$out"/*.log | grep -E '_test.go:[0-9]+:' | sed 's/^ */   skipped: /' | sort -u || true
