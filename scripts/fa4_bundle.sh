#!/usr/bin/env bash
# Pack FlashAttention-4 (flex's FLASH backend) for the lent GPU machine, which reaches no package registry:
# the wheels, unpacked and xz-compressed into .fa4/fa4.tar.xz (about 55 MB; the device call carries at most
# 64 MiB in all). scripts/device_env.sh unpacks it there; then `benchmarks/bench.py --flex ...,flash` times it.
# Versions: torch 2.11's flex calls flash_attn.cute's _flash_attn_fwd; 4.0.0b12 with CuTe DSL 4.4.2 runs there
# (the newest CuTe DSL's libraries alone compress to more than 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.fa4/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.fa4/" >> .git/info/exclude; }
wheels=$(mktemp -d) site=$(mktemp -d)
trap 'rm -rf "$wheels" "$site"' EXIT
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$wheels" flash-attn-4==4.0.0b12 nvidia-cutlass-dsl==4.4.2 nvidia-cutlass-dsl-libs-base==4.4.2 \
  quack-kernels==0.4.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$site"; done  # a wheel is a zip of its installed files
mkdir -p .fa4
tar -C "$site" -cf - . | xz -T2 -9e > .fa4/fa4.tar.xz
ls -l .fa4/fa4.tar.xz
