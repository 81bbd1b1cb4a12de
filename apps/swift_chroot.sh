#!/usr/bin/env bash
# Run a command inside the Swift chroot made by apps/setup_toolchains.sh.
#   apps/swift_chroot.sh mount | umount      /proc and a fresh devpts inside the chroot (apt needs them)
#   apps/swift_chroot.sh run DIR CMD...      copy ios-app/OmniCoderCore and tests/vectors to /work in the chroot,
#                                            then run CMD in /work/DIR with /proc mounted, and unmount again
# Nothing of the host is bind-mounted (no /dev, no checkout), so removing build/ can never reach outside it;
# the chroot's own /dev nodes (made by debootstrap) serve. Sources are copied with their timestamps, so SwiftPM
# builds incrementally in the chroot's /var/cache/omnicoder-swift.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${OMNICODER_TOOLCHAINS:-$ROOT/build/toolchains}
CHROOT="$TOOLS/swift-trixie"

do_mount() {
  mkdir -p "$CHROOT/proc" "$CHROOT/dev/pts"
  mountpoint -q "$CHROOT/proc" || mount -t proc proc "$CHROOT/proc"
  mountpoint -q "$CHROOT/dev/pts" || mount -t devpts -o newinstance devpts "$CHROOT/dev/pts" 2>/dev/null || true
}

do_umount() {
  for m in dev/pts proc; do
    if mountpoint -q "$CHROOT/$m"; then umount "$CHROOT/$m" || umount -l "$CHROOT/$m" || true; fi
  done
}

sync_sources() {
  local work="$CHROOT/work"
  rm -rf "$work/ios-app/OmniCoderCore" "$work/tests/vectors"
  mkdir -p "$work/ios-app" "$work/tests"
  cp -a "$ROOT/ios-app/OmniCoderCore" "$work/ios-app/"
  rm -rf "$work/ios-app/OmniCoderCore/.build"
  cp -a "$ROOT/tests/vectors" "$work/tests/"
}

case "${1:-}" in
  mount) do_mount ;;
  umount) do_umount ;;
  run)
    dir=$2
    shift 2
    sync_sources
    do_mount
    trap do_umount EXIT
    quoted=$(printf '%q ' "$@")
    chroot "$CHROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
      /bin/sh -c "cd /work/$dir && $quoted"
    ;;
  *) echo "usage: $0 mount | umount | run DIR CMD..." >&2; exit 2 ;;
esac
