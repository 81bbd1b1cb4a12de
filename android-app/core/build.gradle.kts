// Platform-free core: manifest + checksums, tokenizers, chat formats, sampling, KV paging, decode loop.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    id("org.jetbrains.kotlin.jvm")
}

// No toolchain request: the JDK that runs Gradle compiles it (Android Studio's bundled JBR 17 or 21 both work),
// producing Java 17 bytecode like the app module.
java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    // org.json is part of Android; on the JVM the same implementation comes from this artifact.
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("omnicoder.vectors", rootProject.projectDir.resolve("../tests/vectors").absolutePath)
}
