#!/usr/bin/env bash
# Compile the Android app's platform-free core (android-app/core) and its JUnit tests with kotlinc and run them on
# the JVM against tests/vectors/. Recompiles only when a source changed (stamp under build/apps/kotlin).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${OMNICODER_TOOLCHAINS:-$ROOT/build/toolchains}
OUT="$ROOT/build/apps/kotlin"
"$ROOT/apps/setup_toolchains.sh" kotlin >/dev/null
KOTLINC="$TOOLS/kotlin/node_modules/kotlin-compiler/bin/kotlinc"
JARS="$TOOLS/jvm/usr/share/java"
CP="$JARS/junit4.jar:$JARS/hamcrest-core.jar:$JARS/com.android.json.jar"
SOURCES=$(find "$ROOT/android-app/core/src" -name '*.kt' | sort)
STAMP=$(cat $SOURCES | sha256sum | cut -c1-16)
mkdir -p "$OUT"
if [ ! -f "$OUT/core-tests.jar" ] || [ "$(cat "$OUT/stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "== kotlinc: android-app/core (main + test) =="
  # shellcheck disable=SC2086
  "$KOTLINC" -nowarn -cp "$CP" -d "$OUT/core-tests.jar" $SOURCES
  echo "$STAMP" >"$OUT/stamp"
fi
KSTDLIB="$TOOLS/kotlin/node_modules/kotlin-compiler/lib/kotlin-stdlib.jar"
java -Domnicoder.vectors="$ROOT/tests/vectors" -cp "$OUT/core-tests.jar:$KSTDLIB:$CP" ai.omnicoder.core.RunTestsKt
