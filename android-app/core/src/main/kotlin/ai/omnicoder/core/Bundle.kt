package ai.omnicoder.core

import org.json.JSONException
import org.json.JSONObject
import java.io.File
import java.security.MessageDigest

/** Why a bundle was rejected; the same kinds as tests/vectors/bundles.json. */
enum class BundleErrorKind { NOT_FOUND, INVALID, FORMAT, VERSION, PATH, MISSING, SIZE, CHECKSUM, UNLISTED, TARGET }

class BundleException(val kind: BundleErrorKind, message: String) : Exception(message)

/** One file of the manifest's `files` map. */
data class FileEntry(val sha256: String, val bytes: Long)

/** The manifest's `model` section (what the runtime needs of it). */
data class ModelInfo(
    val name: String,
    val attention: String,
    val nLayers: Int,
    val vocabSize: Int,
    val contextLength: Int,
    val bosId: Int,
    val eosId: Int,
    val padId: Int,
)

/** A parsed manifest.json (docs/bundle.md); `json` keeps the whole document for target-specific sections. */
class Manifest(val json: JSONObject) {
    val target: String = json.getString("target")
    val model: ModelInfo
    val graphFile: String
    val kv: JSONObject
    val tokenizerFile: String
    val tokenizerType: String
    val tokenizerAddBos: Boolean
    val stopIds: List<Int>

    /** The chat template's role pieces (`tokenizer.chat_format`), null without a template the exporter described. */
    val chatFormat: ChatFormat?
    val sidecars: Map<String, String>
    val files: Map<String, FileEntry>

    init {
        try {
            val m = json.getJSONObject("model")
            model = ModelInfo(
                m.getString("name"), m.getString("attention"), m.getInt("n_layers"), m.getInt("vocab_size"),
                m.getInt("context_length"), m.getInt("bos_id"), m.getInt("eos_id"), m.getInt("pad_id"),
            )
            val graph = json.getJSONObject("graph")
            graphFile = graph.getString("file")
            kv = graph.getJSONObject("kv")
            val tok = json.getJSONObject("tokenizer")
            tokenizerFile = tok.getString("file")
            tokenizerType = tok.getString("type")
            tokenizerAddBos = tok.optBoolean("add_bos", true)
            val stops = tok.optJSONArray("stop_ids")
            stopIds = if (stops == null) listOf(model.eosId) else (0 until stops.length()).map { stops.getInt(it) }
            chatFormat = ChatFormat.fromJson(tok.optJSONObject("chat_format"))
            val side = json.getJSONObject("sidecars")
            sidecars = side.keys().asSequence().associateWith { side.getString(it) }
            val f = json.getJSONObject("files")
            files = f.keys().asSequence().associateWith { name ->
                val e = f.getJSONObject(name)
                val sha = e.getString("sha256")
                if (!SHA_PATTERN.matches(sha)) throw JSONException("files/$name/sha256 is not 64 lowercase hex digits")
                FileEntry(sha, e.getLong("bytes"))
            }
            if (files.isEmpty()) throw JSONException("files is empty")
        } catch (e: JSONException) {
            throw BundleException(BundleErrorKind.INVALID, "manifest.json is invalid: ${e.message}; re-export the bundle")
        }
    }

    companion object {
        private val SHA_PATTERN = Regex("^[0-9a-f]{64}$")
    }
}

/** A verified bundle directory. */
class Bundle(val root: File, val manifest: Manifest) {
    companion object {
        const val HF_TYPE = "huggingface"
    }

    fun file(name: String): File = BundleReader.safeMember(root, name)

    fun sidecar(kind: String): JSONObject? {
        val name = manifest.sidecars[kind] ?: return null
        return try {
            JSONObject(file(name).readText())
        } catch (e: JSONException) {
            throw BundleException(BundleErrorKind.INVALID, "$name is not valid JSON; re-export the bundle")
        }
    }

    /** The bundle's tokenizer: omnicoder-byte, or a Hugging Face tokenizer.json (byte-level BPE, HfTokenizer). */
    fun tokenizer(): TextTokenizer {
        val name = manifest.tokenizerFile
        val m = manifest.model
        val tok = when (manifest.tokenizerType) {
            ByteTokenizer.TYPE -> ByteTokenizer.fromJson(file(name).readText())
            HF_TYPE -> try {
                BundleHfTokenizer(HfTokenizer.fromJson(file(name).readText()), m.bosId, m.eosId, manifest.tokenizerAddBos, manifest.stopIds)
            } catch (e: TokenizerException) {
                throw BundleException(BundleErrorKind.INVALID, "bundle tokenizer $name cannot be used: ${e.message}")
            }
            else -> throw BundleException(
                BundleErrorKind.INVALID,
                "tokenizer type ${manifest.tokenizerType} is not supported (the app reads ${ByteTokenizer.TYPE} and $HF_TYPE)",
            )
        }
        if (tok.vocabSize > m.vocabSize) {
            throw BundleException(
                BundleErrorKind.INVALID,
                "bundle tokenizer $name has ${tok.vocabSize} tokens, more than model.vocab_size ${m.vocabSize}; re-export the bundle",
            )
        }
        return tok
    }

    /** Prompt ids for each chat turn: the bundle's chat format over its tokenizer (plain text without one). */
    fun prompter(): ChatPrompter = ChatPrompter(tokenizer(), manifest.chatFormat)

    fun kvLayout(): KvLayout = KvLayout(manifest.kv, manifest.model.nLayers)

    /**
     * Throws TARGET unless the bundle was exported for `target` (onnx for Android, coreml for iOS) with the KV
     * contract the app drives: past in, present (past + new rows) out. A `--kv-io shared` bundle updates
     * fixed-capacity buffers in place (for onnxruntime-genai and the Python runner), which this app does not bind.
     */
    fun requireTarget(target: String): Bundle {
        if (manifest.target != target) {
            throw BundleException(
                BundleErrorKind.TARGET,
                "this is a ${manifest.target} bundle; this app needs a $target bundle (omnicoder-export --target $target)",
            )
        }
        if (manifest.kv.optString("io", "present") != "present") {
            throw BundleException(
                BundleErrorKind.TARGET,
                "this bundle was exported with --kv-io ${manifest.kv.getString("io")}; the app needs past/present KV " +
                    "(re-export without --kv-io)",
            )
        }
        return this
    }
}

/** Reads and checks a bundle like runtimes/bundle.py: format, version, contained paths, sizes and sha256. */
object BundleReader {
    const val FORMAT = "omnicoder-bundle"
    const val FORMAT_VERSION = 1
    const val MANIFEST = "manifest.json"

    /** Resolve a manifest path inside the bundle; reject absolute paths and paths that leave it. */
    fun safeMember(root: File, name: String): File {
        val parts = name.split('/')
        if (name.isBlank() || name.startsWith("/") || '\\' in name || ".." in parts) {
            throw BundleException(BundleErrorKind.PATH, "bundle file path '$name' leaves the bundle; re-export the bundle")
        }
        val base = root.canonicalFile
        val member = File(base, name).canonicalFile
        var parent = member.parentFile
        while (parent != null && parent != base) parent = parent.parentFile
        if (parent == null) {
            throw BundleException(BundleErrorKind.PATH, "bundle file path '$name' leaves the bundle; re-export the bundle")
        }
        return member
    }

    fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        file.inputStream().use { input ->
            val buffer = ByteArray(1 shl 20)
            while (true) {
                val n = input.read(buffer)
                if (n < 0) break
                digest.update(buffer, 0, n)
            }
        }
        return digest.digest().joinToString("") { "%02x".format(it) }
    }

    /** Open `root`; with `verify` every file's size and sha256 is checked before anything is used. */
    fun open(root: File, verify: Boolean = true, onFile: ((String) -> Unit)? = null): Bundle {
        if (!root.isDirectory) throw BundleException(BundleErrorKind.NOT_FOUND, "bundle $root does not exist")
        val manifestFile = File(root, MANIFEST)
        if (!manifestFile.isFile) {
            throw BundleException(BundleErrorKind.NOT_FOUND, "$root has no $MANIFEST; it is not an OmniCoder bundle")
        }
        val json = try {
            JSONObject(manifestFile.readText())
        } catch (e: JSONException) {
            throw BundleException(BundleErrorKind.INVALID, "$MANIFEST is not valid JSON; re-export the bundle")
        }
        if (json.optString("format") != FORMAT) {
            throw BundleException(BundleErrorKind.FORMAT, "$MANIFEST is not an OmniCoder bundle manifest")
        }
        val version = json.opt("format_version")
        if (version !is Int || version != FORMAT_VERSION) {
            throw BundleException(
                BundleErrorKind.VERSION,
                "bundle format version $version is not supported (this app reads $FORMAT_VERSION); re-export the bundle",
            )
        }
        val manifest = Manifest(json)
        for ((name, entry) in manifest.files) {
            val member = safeMember(root, name)
            if (!member.isFile) throw BundleException(BundleErrorKind.MISSING, "bundle file $name is missing; re-copy the bundle")
            if (!verify) continue
            onFile?.invoke(name)
            val size = member.length()
            if (size != entry.bytes) {
                throw BundleException(BundleErrorKind.SIZE, "bundle file $name has $size bytes, the manifest says ${entry.bytes}")
            }
            if (sha256(member) != entry.sha256) {
                throw BundleException(BundleErrorKind.CHECKSUM, "checksum mismatch for bundle file $name: corrupt or modified")
            }
        }
        val needed = listOf(manifest.graphFile, manifest.tokenizerFile) + manifest.sidecars.values
        for (name in needed) {
            if (name !in manifest.files && manifest.files.keys.none { it.startsWith("$name/") }) {
                throw BundleException(BundleErrorKind.UNLISTED, "$MANIFEST refers to $name, which is not in its file list")
            }
        }
        val bundle = Bundle(root, manifest)
        for (kind in manifest.sidecars.keys) bundle.sidecar(kind)
        return bundle
    }
}
