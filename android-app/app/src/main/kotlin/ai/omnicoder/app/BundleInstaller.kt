package ai.omnicoder.app

import ai.omnicoder.core.Bundle
import ai.omnicoder.core.BundleReader
import android.content.Context
import android.net.Uri
import android.provider.DocumentsContract
import java.io.File

/**
 * The bundles the app can run, each a directory under filesDir/bundles/NAME (ONNX Runtime needs file paths):
 * `bundle` comes from the app's assets (`assets/bundle/`, put there by `omnicoder-package-app-assets`), copied on
 * first use; others are imported from a folder the user picks (Storage Access Framework) or pushed with adb.
 * Every bundle is verified (sizes + sha256) before it is used; copies are made in a temporary directory and
 * renamed into place, so a half-copied bundle is never seen.
 */
object BundleInstaller {
    const val DEFAULT_NAME = "bundle"
    private const val ASSET_DIR = "bundle"

    fun root(context: Context): File = File(context.filesDir, "bundles").also { it.mkdirs() }

    /** Installed bundle names, plus the one in the assets when it is not copied yet. */
    fun list(context: Context): List<String> {
        val names = root(context).listFiles()?.filter { File(it, BundleReader.MANIFEST).isFile }?.map { it.name }.orEmpty()
        val inAssets = context.assets.list(ASSET_DIR)?.contains(BundleReader.MANIFEST) == true
        return (names + if (inAssets) listOf(DEFAULT_NAME) else emptyList()).distinct().sorted()
    }

    fun open(context: Context, name: String, onStatus: (String) -> Unit): Bundle {
        val target = File(root(context), name)
        if (!File(target, BundleReader.MANIFEST).isFile) {
            require(name == DEFAULT_NAME) { "bundle $name is not installed; import it on the Models screen" }
            copyAssets(context, target, onStatus)
        }
        onStatus("verifying bundle checksums")
        return BundleReader.open(target) { file -> onStatus("verifying $file") }.requireTarget("onnx")
    }

    fun delete(context: Context, name: String) {
        File(root(context), name).deleteRecursively()
    }

    /** Copy the folder `tree` (ACTION_OPEN_DOCUMENT_TREE) into bundles/NAME, verify it, return NAME. */
    fun import(context: Context, tree: Uri, onStatus: (String) -> Unit): String {
        val resolver = context.contentResolver
        val rootDoc = DocumentsContract.getTreeDocumentId(tree)
        val name = rootDoc.substringAfterLast('/').substringAfterLast(':').ifEmpty { "imported" }
            .replace(Regex("[^A-Za-z0-9._-]"), "_")
        val target = File(root(context), name)
        val tmp = File(root(context), "$name.tmp")
        tmp.deleteRecursively()
        fun copy(docId: String, dest: File) {
            val children = DocumentsContract.buildChildDocumentsUriUsingTree(tree, docId)
            val columns = arrayOf(
                DocumentsContract.Document.COLUMN_DOCUMENT_ID,
                DocumentsContract.Document.COLUMN_DISPLAY_NAME,
                DocumentsContract.Document.COLUMN_MIME_TYPE,
            )
            resolver.query(children, columns, null, null, null)?.use { c ->
                while (c.moveToNext()) {
                    val id = c.getString(0)
                    val child = File(dest, c.getString(1))
                    if (c.getString(2) == DocumentsContract.Document.MIME_TYPE_DIR) {
                        copy(id, child)
                    } else {
                        onStatus("copying ${child.name}")
                        child.parentFile?.mkdirs()
                        val uri = DocumentsContract.buildDocumentUriUsingTree(tree, id)
                        resolver.openInputStream(uri)!!.use { input -> child.outputStream().use { input.copyTo(it, 1 shl 20) } }
                    }
                }
            }
        }
        copy(rootDoc, tmp)
        try {
            BundleReader.open(tmp) { file -> onStatus("verifying $file") }.requireTarget("onnx")
        } catch (e: Exception) {
            tmp.deleteRecursively()
            throw e
        }
        target.deleteRecursively()
        check(tmp.renameTo(target)) { "cannot move the bundle into $target" }
        return name
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
