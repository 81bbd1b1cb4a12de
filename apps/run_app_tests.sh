#!/usr/bin/env bash
# The sample apps' checks (docs/apps.md): the Kotlin core's JUnit tests on the JVM, the Swift core's `swift test`
# (native swift, or the Debian trixie chroot when root; skipped with the reason otherwise), and the syntax check of
# the platform glue. Toolchains are cached under build/toolchains (apps/setup_toolchains.sh). Exit status: 0 when
# everything that ran passed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${OMNICODER_TOOLCHAINS:-$ROOT/build/toolchains}
status=0
start=$SECONDS

echo "== Kotlin core (android-app/core) =="
"$ROOT/apps/run_kotlin_tests.sh" || status=1

echo "== Swift core (ios-app/OmniCoderCore) =="
if [ "${OMNICODER_SKIP_SWIFT:-0}" = 1 ]; then
  echo "swift: skipped (OMNICODER_SKIP_SWIFT=1)"
elif command -v swift >/dev/null 2>&1 || [ "$(id -u)" = 0 ]; then
  mkdir -p "$ROOT/build/apps"
  "$ROOT/apps/run_swift_tests.sh" >"$ROOT/build/apps/swift-test.log" 2>&1
  rc=$?
  grep -E "error:|failed|Executed [0-9]+ tests" "$ROOT/build/apps/swift-test.log" | tail -n 8
  [ $rc = 0 ] || { status=1; tail -n 40 "$ROOT/build/apps/swift-test.log"; }
else
  echo "swift: skipped (no swift on PATH and not root, so no Debian trixie chroot can be made)"
fi

echo "== glue syntax (tree-sitter) =="
"$ROOT/apps/setup_toolchains.sh" syntax >/dev/null || status=1
"$TOOLS/syntax-venv/bin/python" "$ROOT/apps/syntax_check.py" || status=1

echo "app tests: $((SECONDS - start)) s, status $status"
exit $status
