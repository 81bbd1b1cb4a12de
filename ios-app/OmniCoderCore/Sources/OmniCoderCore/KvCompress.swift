import Foundation

/// How the retention store keeps a compressed token's KV rows (runtimes/kv_format.py round_trip):
/// per group of `group` values (halved until it divides the width), NF4 codes with an fp16 absmax
/// scale, or u8 codes with fp16 scale and minimum. Decoding gives bit for bit numpy's float32 round trip.
public struct KvCompress: Equatable, Sendable {
    public let dtype: String
    public let group: Int

    /// QLoRA's NF4 levels as float32 (runtimes/kv_format.py NF4_LEVELS).
    public static let nf4Levels: [Float] = [
        -1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.091050036, 0.0,
        0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0,
    ]
    /// Midpoints between neighbouring levels, computed in float32 like numpy.
    public static let nf4Midpoints: [Float] = (0..<15).map { (nf4Levels[$0 + 1] + nf4Levels[$0]) / 2 }
    private static let minScale: Float = 1e-6

    public init(dtype: String, group: Int) throws {
        guard dtype == "nf4" || dtype == "u8" else { throw RetentionError("KV compression \(dtype) is unknown; use nf4 or u8") }
        guard group >= 1 else { throw RetentionError("KV compression group must be >= 1, got \(group)") }
        self.dtype = dtype
        self.group = group
    }

    /// The group size used for a row of `width`: `group` halved until it divides the width.
    public static func groupSize(width: Int, group: Int) -> Int {
        var g = group
        while g > 1 && width % g != 0 { g /= 2 }
        return g
    }

    /// numpy.searchsorted(midpoints, v, side="left"): the number of midpoints < v (NaN sorts last).
    public static func nf4Index(_ v: Float) -> Int {
        if v.isNaN { return nf4Midpoints.count }
        var lo = 0
        var hi = nf4Midpoints.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if nf4Midpoints[mid] < v { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Stored bytes of `rows` rows of `width` values: codes, then the fp16 scales (and minimums for u8).
    public func packedBytes(rows: Int, width: Int) -> Int {
        let groups = width / KvCompress.groupSize(width: width, group: group)
        return rows * (dtype == "nf4" ? (width + 1) / 2 + 2 * groups : width + 4 * groups)
    }

    /// Pack `rows` rows of `width` float32 values (row-major).
    public func encode(_ values: [Float], rows: Int, width: Int) -> [UInt8] {
        let g = KvCompress.groupSize(width: width, group: group)
        let groups = rows * (width / g)
        var out = [UInt8](repeating: 0, count: packedBytes(rows: rows, width: width))
        let codeBytes = out.count - groups * (dtype == "nf4" ? 2 : 4)
        for k in 0..<groups {
            let range = (k * g)..<((k + 1) * g)
            if dtype == "nf4" {
                var absmax: Float = 0
                for i in range { absmax = Swift.max(absmax, Swift.abs(values[i])) }
                let scaleBits = Fp16.bits(Swift.max(absmax, KvCompress.minScale))
                let scale = Fp16.float(scaleBits)
                put(&out, codeBytes + 2 * k, scaleBits)
                for i in range {
                    let byte = (i / width) * ((width + 1) / 2) + (i % width) / 2
                    out[byte] |= UInt8(KvCompress.nf4Index(values[i] / scale)) << (i % width % 2 == 0 ? 0 : 4)
                }
            } else {
                var lo = values[range.lowerBound]
                var hi = lo
                for i in range {
                    lo = Swift.min(lo, values[i])
                    hi = Swift.max(hi, values[i])
                }
                let lowBits = Fp16.bits(lo)
                let scaleBits = Fp16.bits(Swift.max((hi - lo) / 255, KvCompress.minScale))
                let low = Fp16.float(lowBits)
                let scale = Fp16.float(scaleBits)
                put(&out, codeBytes + 4 * k, scaleBits)
                put(&out, codeBytes + 4 * k + 2, lowBits)
                for i in range {
                    let code = ((values[i] - low) / scale).rounded(.toNearestOrEven)
                    out[i] = code.isNaN ? 0 : UInt8(Swift.min(Swift.max(code, 0), 255))
                }
            }
        }
        return out
    }

    /// Unpack into `out` (rows * width values, row-major) starting at `offset`.
    public func decode(_ packed: [UInt8], rows: Int, width: Int, into out: inout [Float], offset: Int = 0) {
        let g = KvCompress.groupSize(width: width, group: group)
        let groups = rows * (width / g)
        let codeBytes = packed.count - groups * (dtype == "nf4" ? 2 : 4)
        for k in 0..<groups {
            if dtype == "nf4" {
                let scale = Fp16.float(get(packed, codeBytes + 2 * k))
                for i in (k * g)..<((k + 1) * g) {
                    let byte = packed[(i / width) * ((width + 1) / 2) + (i % width) / 2]
                    let code = i % width % 2 == 0 ? byte & 15 : byte >> 4
                    out[offset + i] = KvCompress.nf4Levels[Int(code)] * scale
                }
            } else {
                let scale = Fp16.float(get(packed, codeBytes + 4 * k))
                let low = Fp16.float(get(packed, codeBytes + 4 * k + 2))
                for i in (k * g)..<((k + 1) * g) { out[offset + i] = Float(packed[i]) * scale + low }
            }
        }
    }

    /// The values after storage and back (what numpy's round trip returns).
    public func roundTrip(_ values: [Float], rows: Int, width: Int) -> [Float] {
        var out = [Float](repeating: 0, count: values.count)
        decode(encode(values, rows: rows, width: width), rows: rows, width: width, into: &out)
        return out
    }

    private func put(_ out: inout [UInt8], _ at: Int, _ value: UInt16) {
        out[at] = UInt8(value & 0xff)
        out[at + 1] = UInt8(value >> 8)
    }

    private func get(_ packed: [UInt8], _ at: Int) -> UInt16 { UInt16(packed[at]) | UInt16(packed[at + 1]) << 8 }
}
