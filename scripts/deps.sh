#!/usr/bin/env bash
# deps.sh: install the system packages clipmpi builds against, when missing.
# Debian/Ubuntu: apt-get (as root, or through sudo). Elsewhere: print what to
# install and fail.
set -euo pipefail
pkgs=(libopenblas-dev libopenmpi-dev openmpi-bin libdnnl-dev pkg-config)
need_go=1.26

if ! command -v go >/dev/null; then
  echo "deps: Go $need_go or newer is required (https://go.dev/doc/install)" >&2
  exit 1
fi

if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    exit 0
  fi
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi

ok=1
pkg-config --exists openblas 2>/dev/null || { ok=0; echo "deps: OpenBLAS not found by pkg-config (package openblas / openblas-devel / brew install openblas)" >&2; }
pkg-config --exists ompi 2>/dev/null || { ok=0; echo "deps: Open MPI not found by pkg-config (package openmpi / openmpi-devel / brew install open-mpi)" >&2; }
{ pkg-config --exists dnnl 2>/dev/null || [ -f /usr/include/oneapi/dnnl/dnnl.h ] || [ -f /usr/local/include/oneapi/dnnl/dnnl.h ]; } || { ok=0; echo "deps: oneDNN not found (header oneapi/dnnl/dnnl.h; package onednn / onednn-devel / brew install onednn)" >&2; }
command -v mpirun >/dev/null || { ok=0; echo "deps: mpirun not on PATH (Open MPI)" >&2; }
[ $ok = 1 ] || { echo "deps: install the above, or build without tags: go build ./... (pure Go, single rank)" >&2; exit 1; }
