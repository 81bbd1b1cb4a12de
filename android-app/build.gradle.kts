// OmniCoder sample app: `core` is platform-free Kotlin (unit-tested on the JVM, also by apps/run_kotlin_tests.sh),
// `app` is the Android glue (Compose chat screen + ONNX Runtime). See README.md.
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
    id("org.jetbrains.kotlin.jvm") version "2.1.0" apply false
    id("org.jetbrains.kotlin.plugin.compose") version "2.1.0" apply false
}
