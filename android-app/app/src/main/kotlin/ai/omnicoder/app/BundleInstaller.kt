package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.BundleReader
import android.content.Context
import java.io.File

/**
 * Finds the bundle: a copy under filesDir (verified again on every start), else the app's assets
 * (`assets/bundle/`, put there by `omnicoder-package-app-assets`), copied atomically to filesDir first because
 * ONNX Runtime needs a file path. A bundle pushed to `filesDir/bundle` (adb) wins over the assets.
 */
object BundleInstaller {
    private const val ASSET_DIR = "bundle"

    fun install(context: Context, onStatus: (String) -> Unit): Bundle {
        val target = File(context.filesDir, ASSET_DIR)
        if (!File(target, BundleReader.MANIFEST).isFile) copyAssets(context, target, onStatus)
        onStatus("verifying bundle checksums")
        return BundleReader.open(target) { name -> onStatus("verifying $name") }.requireTarget("onnx")
    }

    private fun copyAssets(context: Context, target: File, onStatus: (String) -> Unit) {
        val assets = context.assets
        val names = assets.list(ASSET_DIR)?.toList().orEmpty()
        require(BundleReader.MANIFEST in names) {
            "no bundle in the app's assets: run omnicoder-package-app-assets --bundle DIR and rebuild the app"
        }
        val tmp = File(target.parentFile, "${target.name}.tmp")
        tmp.deleteRecursively()
        fun copy(path: String, dest: File) {
            val children = assets.list(path).orEmpty()
            if (children.isEmpty()) {
                onStatus("copying $path")
                dest.parentFile?.mkdirs()
                assets.open(path).use { input -> dest.outputStream().use { input.copyTo(it, 1 shl 20) } }
            } else {
                for (child in children) copy("$path/$child", File(dest, child))
            }
        }
        copy(ASSET_DIR, tmp)
        target.deleteRecursively()
        check(tmp.renameTo(target)) { "cannot move the bundle into $target" }
    }
}
