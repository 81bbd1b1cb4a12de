// Platform-free core: manifest + checksums, byte tokenizer, sampling, KV paging, decode loop.
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    toolchain.languageVersion.set(JavaLanguageVersion.of(17))
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
