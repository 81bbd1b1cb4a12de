#!/usr/bin/env bash
# `swift test` for the iOS app's platform-free core (ios-app/OmniCoderCore) against tests/vectors/: with the native
# toolchain where `swift` is on PATH (macOS, Linux with Swift), else inside the Debian trixie chroot of
# apps/setup_toolchains.sh (Linux, root). Build products go to build/apps/swift (cached between runs).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PKG=ios-app/OmniCoderCore
if command -v swift >/dev/null 2>&1; then
  cd "$ROOT/$PKG"
  extra=()  # XCTest only: Swift Testing would close with a "0 tests" line
  if swift test --help 2>&1 | grep -q -- --disable-swift-testing; then extra=(--disable-swift-testing); fi
  exec swift test --scratch-path "$ROOT/build/apps/swift" "${extra[@]}" "$@"
fi
"$ROOT/apps/setup_toolchains.sh" swift >/dev/null
exec "$ROOT/apps/swift_chroot.sh" run "$PKG" swift test --scratch-path /var/cache/omnicoder-swift \
  --disable-swift-testing "$@"
