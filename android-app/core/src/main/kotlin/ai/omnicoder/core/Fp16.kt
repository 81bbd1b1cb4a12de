package ai.omnicoder.core

/**
 * IEEE 754 half precision by hand (no platform Float16 needed): float32 -> float16 bits with round to nearest
 * even, exactly like numpy's `astype(np.float16)` (subnormals, ties, overflow to infinity), and back.
 */
object Fp16 {
    /** The float16 bit pattern nearest to `x` (ties to even); NaN stays NaN, |x| >= 65520 becomes infinity. */
    fun toBits(x: Float): Short {
        val f = java.lang.Float.floatToRawIntBits(x)
        val sign = (f ushr 16) and 0x8000
        val abs = f and 0x7fffffff
        val half = when {
            abs >= 0x7f800000 -> if (abs > 0x7f800000) 0x7e00 or ((abs ushr 13) and 0x3ff) else 0x7c00
            abs >= 0x477ff000 -> 0x7c00 // 65520 and up round to infinity
            abs < 0x38800000 -> Math.rint(java.lang.Float.intBitsToFloat(abs) * 16777216.0).toInt() // subnormal: k * 2^-24
            else -> ((abs + 0x0fff + ((abs ushr 13) and 1)) ushr 13) - (112 shl 10) // drop 13 mantissa bits, rebias
        }
        return (sign or half).toShort()
    }

    /** The float32 value of float16 bits (exact). */
    fun toFloat(bits: Short): Float {
        val h = bits.toInt() and 0xffff
        val sign = (h and 0x8000) shl 16
        val exponent = (h ushr 10) and 0x1f
        val mantissa = h and 0x3ff
        val magnitude = when (exponent) {
            0 -> java.lang.Float.floatToRawIntBits(mantissa * SUBNORMAL)
            0x1f -> 0x7f800000 or (mantissa shl 13)
            else -> ((exponent + 112) shl 23) or (mantissa shl 13)
        }
        return java.lang.Float.intBitsToFloat(sign or magnitude)
    }

    /** `x` rounded to the nearest float16 value, as numpy's `x.astype(float16).astype(float32)`. */
    fun round(x: Float): Float = toFloat(toBits(x))

    private val SUBNORMAL = Math.scalb(1f, -24)
}
