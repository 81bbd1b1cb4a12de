package ai.omnicoder.core

/**
 * How the retention store keeps a compressed token's KV rows (runtimes/kv_format.py round_trip):
 * per group of `group` values (halved until it divides the width), NF4 codes with an fp16 absmax
 * scale, or u8 codes with fp16 scale and minimum. Decoding gives bit for bit numpy's float32 round trip.
 */
class KvCompress(val dtype: String, val group: Int) {
    init {
        require(dtype == "nf4" || dtype == "u8") { "KV compression $dtype is unknown; use nf4 or u8" }
        require(group >= 1) { "KV compression group must be >= 1, got $group" }
    }

    /** Stored bytes of `rows` rows of `width` values: codes, then the fp16 scales (and minimums for u8). */
    fun packedBytes(rows: Int, width: Int): Int {
        val groups = width / groupSize(width, group)
        return rows * if (dtype == "nf4") (width + 1) / 2 + 2 * groups else width + 4 * groups
    }

    /** Pack `rows` rows of `width` float32 values (row-major). */
    fun encode(values: FloatArray, rows: Int, width: Int): ByteArray {
        val g = groupSize(width, group)
        val groups = rows * (width / g)
        val out = ByteArray(packedBytes(rows, width))
        val codeBytes = out.size - groups * if (dtype == "nf4") 2 else 4
        for (k in 0 until groups) {
            val start = k * g
            if (dtype == "nf4") {
                var absmax = 0f
                for (i in start until start + g) absmax = maxOf(absmax, Math.abs(values[i]))
                val scaleBits = Fp16.toBits(maxOf(absmax, MIN_SCALE))
                val scale = Fp16.toFloat(scaleBits)
                putShort(out, codeBytes + 2 * k, scaleBits)
                for (i in start until start + g) setNibble(out, i, width, nf4Index(values[i] / scale))
            } else {
                var lo = values[start]
                var hi = values[start]
                for (i in start until start + g) {
                    lo = minOf(lo, values[i])
                    hi = maxOf(hi, values[i])
                }
                val lowBits = Fp16.toBits(lo)
                val scaleBits = Fp16.toBits(maxOf((hi - lo) / 255f, MIN_SCALE))
                val low = Fp16.toFloat(lowBits)
                val scale = Fp16.toFloat(scaleBits)
                putShort(out, codeBytes + 4 * k, scaleBits)
                putShort(out, codeBytes + 4 * k + 2, lowBits)
                for (i in start until start + g) {
                    out[i] = Math.rint(((values[i] - low) / scale).toDouble()).coerceIn(0.0, 255.0).toInt().toByte()
                }
            }
        }
        return out
    }

    /** Unpack into `out` (rows * width values, row-major) starting at `offset`. */
    fun decode(packed: ByteArray, rows: Int, width: Int, out: FloatArray, offset: Int = 0) {
        val g = groupSize(width, group)
        val groups = rows * (width / g)
        val codeBytes = packed.size - groups * if (dtype == "nf4") 2 else 4
        for (k in 0 until groups) {
            if (dtype == "nf4") {
                val scale = Fp16.toFloat(getShort(packed, codeBytes + 2 * k))
                for (i in k * g until (k + 1) * g) out[offset + i] = NF4_LEVELS[getNibble(packed, i, width)] * scale
            } else {
                val scale = Fp16.toFloat(getShort(packed, codeBytes + 4 * k))
                val low = Fp16.toFloat(getShort(packed, codeBytes + 4 * k + 2))
                for (i in k * g until (k + 1) * g) out[offset + i] = (packed[i].toInt() and 0xff).toFloat() * scale + low
            }
        }
    }

    /** The values after storage and back (what numpy's round trip returns). */
    fun roundTrip(values: FloatArray, rows: Int, width: Int): FloatArray =
        FloatArray(values.size).also { decode(encode(values, rows, width), rows, width, it) }

    private fun setNibble(out: ByteArray, index: Int, width: Int, code: Int) {
        val byte = (index / width) * ((width + 1) / 2) + (index % width) / 2
        val shift = if (index % width % 2 == 0) 0 else 4
        out[byte] = (out[byte].toInt() or (code shl shift)).toByte()
    }

    private fun getNibble(packed: ByteArray, index: Int, width: Int): Int {
        val byte = packed[(index / width) * ((width + 1) / 2) + (index % width) / 2].toInt()
        return if (index % width % 2 == 0) byte and 15 else (byte shr 4) and 15
    }

    private fun putShort(out: ByteArray, at: Int, value: Short) {
        out[at] = value.toByte()
        out[at + 1] = (value.toInt() shr 8).toByte()
    }

    private fun getShort(packed: ByteArray, at: Int): Short =
        ((packed[at].toInt() and 0xff) or ((packed[at + 1].toInt() and 0xff) shl 8)).toShort()

    companion object {
        /** QLoRA's NF4 levels as float32 (runtimes/kv_format.py NF4_LEVELS). */
        val NF4_LEVELS = floatArrayOf(
            -1.0f, -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f, -0.091050036f, 0.0f,
            0.0795803f, 0.1609302f, 0.2461123f, 0.33791524f, 0.44070983f, 0.562617f, 0.72295684f, 1.0f,
        )

        /** Midpoints between neighbouring levels, computed in float32 like numpy. */
        val NF4_MIDPOINTS = FloatArray(15) { (NF4_LEVELS[it + 1] + NF4_LEVELS[it]) / 2f }

        private const val MIN_SCALE = 1e-6f

        /** The group size used for a row of `width`: `group` halved until it divides the width. */
        fun groupSize(width: Int, group: Int): Int {
            var g = group
            while (g > 1 && width % g != 0) g /= 2
            return g
        }

        /** numpy.searchsorted(midpoints, v, side="left"): the number of midpoints < v (NaN sorts last). */
        fun nf4Index(v: Float): Int {
            if (v.isNaN()) return NF4_MIDPOINTS.size
            var lo = 0
            var hi = NF4_MIDPOINTS.size
            while (lo < hi) {
                val mid = (lo + hi) ushr 1
                if (NF4_MIDPOINTS[mid] < v) lo = mid + 1 else hi = mid
            }
            return lo
        }
    }
}
