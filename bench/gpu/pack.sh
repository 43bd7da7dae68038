#!/bin/bash
# Makes .gpu-proof/prefix.tar.xz, what bench/gpu/proof.sh carries to the GPU machine (which has no
# Node, no CRIU and no package registry): run here, as root, after scripts/setup.
#
#   [NV_CUDA_CHECKPOINT=PATH] bench/gpu/pack.sh
#
# The prefix unpacks to /tmp/gpu-proof: bin/{node,criu,xtables-nft-multi,cuda-checkpoint-min},
# xbin/ (iptables names), xtables/ (its extensions), lib/ (this host's loader, glibc and every
# library those binaries need), cedana/ (bin, dist/src, package.json, production node_modules of a
# clean build of HEAD). The ELF binaries are patched (patchelf) to load through lib/ld-linux and to
# find their libraries in lib/ only, so they run whatever the image's glibc; what they start (CRIU's
# iptables, action scripts) uses the image's own. cuda-checkpoint-min is built from
# cuda_checkpoint_min.c against the image's libc (it loads the image's libcuda), and used only
# where the GPU machine has no cuda-checkpoint. NV_CUDA_CHECKPOINT names NVIDIA's published binary
# (bin/x86_64_Linux/cuda-checkpoint of github.com/NVIDIA/cuda-checkpoint, under NVIDIA's EULA: carried
# as bin/cuda-checkpoint-nv, never committed here), the first fallback.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
P=/tmp/gpu-proof WT=/tmp/gpu-wt
command -v patchelf >/dev/null || apt-get install -y patchelf

# cedana: a clean build of HEAD (not of the working tree), production dependencies only
if [ ! -d "$WT" ]; then git -C "$REPO" worktree add --detach "$WT" HEAD; fi
(cd "$WT" && npm ci --no-audit --no-fund >/dev/null && npm run build >/dev/null)
rm -rf "$P" && mkdir -p "$P/bin" "$P/lib" "$P/xbin" "$P/xtables" "$P/cedana/dist"
cp -r "$WT/package.json" "$WT/package-lock.json" "$WT/bin" "$P/cedana/"
cp -r "$WT/dist/src" "$P/cedana/dist/" && find "$P/cedana/dist" -name '*.map' -delete
(cd "$P/cedana" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null && rm -rf node_modules/@types)

# the binaries, their libraries, the loader
cp /usr/local/sbin/criu /usr/sbin/xtables-nft-multi "$P/bin/"
cp "$(command -v node)" "$P/bin/node" && strip "$P/bin/node"
cp /usr/lib/x86_64-linux-gnu/xtables/*.so "$P/xtables/"
for f in "$P/bin/criu" "$P/bin/xtables-nft-multi" "$P/bin/node" "$P"/xtables/*.so; do
  ldd "$f" | awk '/=>/ {print $3} /ld-linux/ && !/=>/ {print $1}'
done | sort -u | while read -r l; do cp -L "$l" "$P/lib/"; done
for b in criu xtables-nft-multi node; do
  patchelf --set-interpreter "$P/lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$P/lib" "$P/bin/$b"
done
for n in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ln -sf ../bin/xtables-nft-multi "$P/xbin/$n"
done
cc -O2 -Wall -o "$P/bin/cuda-checkpoint-min" "$REPO/bench/gpu/cuda_checkpoint_min.c" -ldl
[ -n "${NV_CUDA_CHECKPOINT:-}" ] && install -m 755 "$NV_CUDA_CHECKPOINT" "$P/bin/cuda-checkpoint-nv"

"$P/bin/criu" --version >/dev/null && "$P/bin/node" "$P/cedana/bin/cedana" --version >/dev/null
mkdir -p "$REPO/.gpu-proof"
tar -C /tmp -cf - gpu-proof | xz -9 -T0 >"$REPO/.gpu-proof/prefix.tar.xz"
du -sh "$P" "$REPO/.gpu-proof/prefix.tar.xz"
