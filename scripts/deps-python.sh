#!/usr/bin/env bash
# deps-python.sh [PYTHON]: make PyTorch, pytest and mpi4py importable by
# PYTHON (default /usr/bin/python3, Debian's, whose packages they are): on
# Debian/Ubuntu apt-get install python3-torch python3-pytest python3-mpi4py
# when any is missing (as root, or through sudo); elsewhere print what to
# install and fail. The Python package itself (python/clipmpi) needs only
# `make lib` and the standard library; these are for clipmpi.torch, its
# tests and make bench-torch.
set -euo pipefail
py=${1:-/usr/bin/python3}
mods=(torch pytest mpi4py)
pkgs=(python3-torch python3-pytest python3-mpi4py)

missing=()
for i in "${!mods[@]}"; do
  "$py" -c "import ${mods[$i]}" 2>/dev/null || missing+=("${pkgs[$i]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$py" != /usr/bin/python3 ] || ! command -v apt-get >/dev/null; then
  echo "deps-python: $py cannot import ${mods[*]}: install PyTorch, pytest and mpi4py for it (pip install torch pytest mpi4py)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "deps-python: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "deps-python: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=120 update -qq
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for m in "${mods[@]}"; do
  "$py" -c "import $m" || { echo "deps-python: $py still cannot import $m" >&2; exit 1; }
done
