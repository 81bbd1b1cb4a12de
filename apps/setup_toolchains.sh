#!/usr/bin/env bash
# Idempotent, cached toolchains for the sample apps' core tests (see docs/apps.md), all under build/toolchains/:
#   kotlin: kotlinc 2.4.20 from npm; JUnit 4 + hamcrest + Android's org.json as jars unpacked from Debian .debs
#           (`apt-get download` + `dpkg -x`: no root needed, offline after the first run).
#   syntax: a venv with tree-sitter (+ Kotlin and Swift grammars) and openstep-parser for apps/syntax_check.py.
#   swift:  nothing when `swift` is on PATH (macOS, a Swift toolchain); else a Debian trixie chroot with the
#           `swiftlang` package (+ libssl-dev: the core's SHA-256 on Linux) made by debootstrap (needs root; prints
#           why and exits 3 when it cannot). A chroot made with another package list gets the missing packages.
# Usage: apps/setup_toolchains.sh [kotlin|syntax|swift|all]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${OMNICODER_TOOLCHAINS:-$ROOT/build/toolchains}
KOTLIN_VERSION=2.4.20
SUITE=trixie
SWIFT_DEBS="swiftlang libc6-dev libstdc++-14-dev libssl-dev ca-certificates"
what=${1:-all}
mkdir -p "$TOOLS"

kotlin() {
  local kotlinc="$TOOLS/kotlin/node_modules/kotlin-compiler/bin/kotlinc"
  if [ ! -x "$kotlinc" ]; then
    echo "== kotlinc $KOTLIN_VERSION (npm) =="
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/kotlin" "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
    chmod +x "$TOOLS/kotlin/node_modules/kotlin-compiler/bin/"* || true
  fi
  local jars="$TOOLS/jvm/usr/share/java"
  if [ ! -f "$jars/junit4.jar" ] || [ ! -f "$jars/hamcrest-core.jar" ] || [ ! -f "$jars/com.android.json.jar" ]; then
    echo "== JUnit 4, hamcrest, org.json (Debian .debs) =="
    mkdir -p "$TOOLS/debs"
    (
      cd "$TOOLS/debs"
      apt-get download junit4 libhamcrest-java libandroid-json-java >/dev/null 2>&1 \
        || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null && apt-get download junit4 libhamcrest-java libandroid-json-java >/dev/null; }
    )
    for deb in "$TOOLS"/debs/*.deb; do dpkg -x "$deb" "$TOOLS/jvm"; done
  fi
  echo "kotlin toolchain: $kotlinc"
}

syntax() {
  local venv="$TOOLS/syntax-venv"
  if [ ! -f "$venv/.ready" ]; then
    echo "== syntax-check venv (tree-sitter, PyPI) =="
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q tree-sitter==0.26.1 tree-sitter-kotlin==1.1.0 tree-sitter-swift==0.7.4 \
      openstep-parser==2.0.3 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import tree_sitter_kotlin, tree_sitter_swift, openstep_parser"
    touch "$venv/.ready"
  fi
  echo "syntax toolchain: $venv"
}

swift_chroot() {
  if command -v swift >/dev/null 2>&1; then
    echo "swift toolchain: $(command -v swift) (native)"
    return 0
  fi
  local chroot="$TOOLS/swift-$SUITE"
  if [ "$(cat "$chroot/.omnicoder-swift-ready" 2>/dev/null)" = "$SWIFT_DEBS" ]; then
    echo "swift toolchain: chroot $chroot"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "swift: no swift on PATH and not root, so no Debian $SUITE chroot can be made (debootstrap and chroot need root)" >&2
    exit 3
  fi
  echo "== Swift: Debian $SUITE chroot with swiftlang (first run: a few minutes, ~1.5 GB) =="
  command -v debootstrap >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq debootstrap >/dev/null; }
  if [ ! -x "$chroot/usr/bin/apt-get" ]; then
    rm -rf "$chroot.partial"
    debootstrap --variant=minbase "$SUITE" "$chroot.partial" http://deb.debian.org/debian >/dev/null
    mv "$chroot.partial" "$chroot"
  fi
  cp /etc/resolv.conf "$chroot/etc/resolv.conf" 2>/dev/null || true
  "$ROOT/apps/swift_chroot.sh" mount
  trap '"$ROOT/apps/swift_chroot.sh" umount' EXIT
  chroot "$chroot" /bin/sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $SWIFT_DEBS >/dev/null && apt-get clean"
  echo "$SWIFT_DEBS" >"$chroot/.omnicoder-swift-ready"
  echo "swift toolchain: chroot $chroot"
}

case "$what" in
  kotlin) kotlin ;;
  syntax) syntax ;;
  swift) swift_chroot ;;
  all) kotlin; syntax; swift_chroot ;;
  *) echo "usage: $0 [kotlin|syntax|swift|all]" >&2; exit 2 ;;
esac
