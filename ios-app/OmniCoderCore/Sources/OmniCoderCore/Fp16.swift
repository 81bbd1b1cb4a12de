import Foundation

/// IEEE 754 half precision by hand (no `Float16`, which not every platform has): float32 -> float16 bits with
/// round to nearest even, exactly like numpy's `astype(np.float16)` (subnormals, ties, overflow to infinity), and back.
public enum Fp16 {
    /// The float16 bit pattern nearest to `x` (ties to even); NaN stays NaN, |x| >= 65520 becomes infinity.
    public static func bits(_ x: Float) -> UInt16 {
        let f = x.bitPattern
        let sign = (f >> 16) & 0x8000
        let abs = f & 0x7fff_ffff
        let half: UInt32
        if abs >= 0x7f80_0000 {
            half = abs > 0x7f80_0000 ? 0x7e00 | ((abs >> 13) & 0x3ff) : 0x7c00
        } else if abs >= 0x477f_f000 {
            half = 0x7c00  // 65520 and up round to infinity
        } else if abs < 0x3880_0000 {  // subnormal: k * 2^-24
            half = UInt32((Double(Float(bitPattern: abs)) * 16_777_216).rounded(.toNearestOrEven))
        } else {  // drop 13 mantissa bits (ties to even), rebias the exponent
            half = ((abs + 0x0fff + ((abs >> 13) & 1)) >> 13) - (112 << 10)
        }
        return UInt16(sign | half)
    }

    /// The float32 value of float16 bits (exact).
    public static func float(_ bits: UInt16) -> Float {
        let h = UInt32(bits)
        let sign = (h & 0x8000) << 16
        let exponent = (h >> 10) & 0x1f
        let mantissa = h & 0x3ff
        let magnitude: UInt32
        switch exponent {
        case 0: magnitude = (Float(mantissa) * 0x1p-24).bitPattern
        case 0x1f: magnitude = 0x7f80_0000 | (mantissa << 13)
        default: magnitude = ((exponent + 112) << 23) | (mantissa << 13)
        }
        return Float(bitPattern: sign | magnitude)
    }

    /// `x` rounded to the nearest float16 value, as numpy's `x.astype(float16).astype(float32)`.
    public static func round(_ x: Float) -> Float { float(bits(x)) }
}
