#!/usr/bin/env bash
# Rebuilds conv.wasm from conv.c (the .wasm is committed: neither CI nor users
# need a compiler). Needs clang and lld with the wasm32 target, and wabt's wasm2wat for the checks
# (Debian: apt-get install -y clang lld wabt).
set -euo pipefail
cd "$(dirname "$0")"
# -fno-builtin: no calls to memset/memcpy, which the module does not have (it links no libc).
clang --target=wasm32 -O3 -msimd128 -nostdlib -fno-builtin \
  -Wl,--no-entry -Wl,--import-memory -Wl,--strip-all \
  -o conv.wasm conv.c
# The module shares tfjs-backend-wasm's memory, so it must not own any of it: no data segment and
# no use of the shadow-stack pointer (the linker still declares one, at an address tfjs owns).
wat="$(wasm2wat conv.wasm)"
if grep -q '(data' <<<"$wat"; then echo 'conv.wasm has a data segment' >&2; exit 1; fi
if grep -qE 'global\.(get|set)' <<<"$wat"; then echo 'conv.wasm uses the stack pointer' >&2; exit 1; fi
imports="$(grep -c '(import' <<<"$wat")"
if [ "$imports" != 1 ]; then echo "conv.wasm imports $imports things, expected the memory only" >&2; exit 1; fi
# The source the committed binary was built from (a test fails when conv.c changes without a rebuild).
sha256sum conv.c | cut -d' ' -f1 > conv.wasm.source-sha256
echo "conv.wasm: $(wc -c < conv.wasm) bytes, memory import only, no data, no stack"
