package ai.omnicoder.core

import org.junit.runner.JUnitCore
import org.junit.runner.notification.Failure
import kotlin.system.exitProcess

/** Runs the core's JUnit tests without Gradle (apps/run_kotlin_tests.sh); ends with "kotlin: N passed, M failed". */
fun main() {
    val classes = arrayOf(VectorsTest::class.java, CoreTest::class.java, RetentionTest::class.java, HfTokenizerTest::class.java, ChatFormatTest::class.java, AppLogicTest::class.java, SpeculativeTest::class.java)
    val result = JUnitCore().run(*classes)
    for (failure: Failure in result.failures) {
        println("FAILED ${failure.testHeader}: ${failure.message}")
        println(failure.trace.lines().take(12).joinToString("\n"))
    }
    val passed = result.runCount - result.failureCount
    println("kotlin: $passed passed, ${result.failureCount} failed, ${result.ignoreCount} skipped")
    exitProcess(if (result.wasSuccessful()) 0 else 1)
}
