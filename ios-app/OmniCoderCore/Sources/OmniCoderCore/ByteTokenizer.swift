import Foundation

/// The byte-level tokenizer of omnicoder/tokenizer.py: ids 0-255 are bytes, then BOS/EOS/PAD.
///
/// `encode(utf16:)` is generalized UTF-8 over UTF-16 code units (a lone surrogate takes 3 bytes, as Python's
/// `surrogatepass`); `decodeUTF16` is its inverse. Invalid bytes decode to U+FFFD where Python would raise.
public struct ByteTokenizer: Equatable, Sendable {
    public static let type = "omnicoder-byte"
    public let vocabSize: Int
    public let bosId: Int
    public let eosId: Int
    public let padId: Int

    public init(vocabSize: Int = 272, bosId: Int = 256, eosId: Int = 257, padId: Int = 258) {
        self.vocabSize = vocabSize
        self.bosId = bosId
        self.eosId = eosId
        self.padId = padId
    }

    public static func fromJSON(_ data: Data) throws -> ByteTokenizer {
        guard let spec = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            spec["type"] as? String == type, let vocab = spec["vocab_size"] as? Int,
            let special = spec["special_tokens"] as? [String: Int], let bos = special["bos"], let eos = special["eos"],
            let pad = special["pad"]
        else { throw BundleError(kind: .invalid, message: "tokenizer.json is not an omnicoder-byte tokenizer") }
        return ByteTokenizer(vocabSize: vocab, bosId: bos, eosId: eos, padId: pad)
    }

    public func encode(_ text: String, addBos: Bool = false) -> [Int] {
        (addBos ? [bosId] : []) + text.utf8.map { Int($0) }
    }

    public func encode(utf16 units: [UInt16], addBos: Bool = false) -> [Int] {
        var out: [Int] = addBos ? [bosId] : []
        var i = 0
        while i < units.count {
            var cp = UInt32(units[i])
            if (0xD800..<0xDC00).contains(cp), i + 1 < units.count, (0xDC00..<0xE000).contains(units[i + 1]) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (UInt32(units[i + 1]) - 0xDC00)
                i += 1
            }
            switch cp {
            case ..<0x80: out.append(Int(cp))
            case ..<0x800: out += [0xC0 | Int(cp >> 6), 0x80 | Int(cp & 0x3F)]
            case ..<0x10000: out += [0xE0 | Int(cp >> 12), 0x80 | Int((cp >> 6) & 0x3F), 0x80 | Int(cp & 0x3F)]
            default:
                out += [
                    0xF0 | Int(cp >> 18), 0x80 | Int((cp >> 12) & 0x3F), 0x80 | Int((cp >> 6) & 0x3F),
                    0x80 | Int(cp & 0x3F),
                ]
            }
            i += 1
        }
        return out
    }

    /// UTF-16 code units of the byte ids (lone surrogates kept, as Python's `surrogatepass`).
    public func decodeUTF16(_ ids: [Int]) -> [UInt16] {
        var decoder = UTF8StreamDecoder(surrogatePass: true)
        var units: [UInt16] = []
        for id in ids where (0..<256).contains(id) { units += decoder.pushUnits(id) }
        return units + decoder.flushUnits()
    }

    public func decode(_ ids: [Int]) -> String { String(decoding: decodeUTF16(ids), as: UTF16.self) }

    public func streamDecoder() -> UTF8StreamDecoder { UTF8StreamDecoder(surrogatePass: false) }
}

/// UTF-8 decoding with Unicode's "maximal subpart" replacement, piece by piece as Python's incremental decoder
/// (`errors="replace"`) emits it, including its wait for a third byte after ED A0-BF.
public struct UTF8StreamDecoder {
    private let surrogatePass: Bool
    private var needed = 0
    private var seen = 0
    private var cp: UInt32 = 0
    private var lo = 0x80
    private var hi = 0xBF
    private var lead = 0
    private var heldSurrogate = false
    private static let replacement: UInt16 = 0xFFFD

    public init(surrogatePass: Bool = false) { self.surrogatePass = surrogatePass }

    /// The text that token `id` completes ("" for special tokens and incomplete sequences).
    public mutating func push(_ id: Int) -> String { String(decoding: pushUnits(id), as: UTF16.self) }

    public mutating func flush() -> String { String(decoding: flushUnits(), as: UTF16.self) }

    public mutating func flushUnits() -> [UInt16] {
        if heldSurrogate {
            heldSurrogate = false
            return [Self.replacement, Self.replacement]
        }
        if needed == 0 { return [] }
        needed = 0
        return [Self.replacement]
    }

    public mutating func pushUnits(_ id: Int) -> [UInt16] {
        guard (0..<256).contains(id) else { return [] }
        var out: [UInt16] = []
        if heldSurrogate {
            heldSurrogate = false
            out += [Self.replacement, Self.replacement]
        }
        if needed > 0 {
            if (lo...hi).contains(id) {
                cp = (cp << 6) | UInt32(id & 0x3F)
                seen += 1
                lo = 0x80
                hi = 0xBF
                if seen == needed {
                    needed = 0
                    append(cp, &out)
                }
                return out
            }
            needed = 0
            if lead == 0xED && seen == 0 && (0xA0...0xBF).contains(id) {
                heldSurrogate = true
                return out
            }
            out.append(Self.replacement)
        }
        switch id {
        case 0x00...0x7F: out.append(UInt16(id))
        case 0xC2...0xDF: start(1, id & 0x1F, 0x80, 0xBF, id)
        case 0xE0: start(2, id & 0x0F, 0xA0, 0xBF, id)
        case 0xE1...0xEC, 0xEE, 0xEF: start(2, id & 0x0F, 0x80, 0xBF, id)
        case 0xED: start(2, id & 0x0F, 0x80, surrogatePass ? 0xBF : 0x9F, id)
        case 0xF0: start(3, id & 0x07, 0x90, 0xBF, id)
        case 0xF1...0xF3: start(3, id & 0x07, 0x80, 0xBF, id)
        case 0xF4: start(3, id & 0x07, 0x80, 0x8F, id)
        default: out.append(Self.replacement)
        }
        return out
    }

    private mutating func start(_ count: Int, _ bits: Int, _ low: Int, _ high: Int, _ byte: Int) {
        needed = count
        seen = 0
        cp = UInt32(bits)
        lo = low
        hi = high
        lead = byte
    }

    private func append(_ cp: UInt32, _ out: inout [UInt16]) {
        if cp < 0x10000 {
            out.append(UInt16(cp))
        } else {
            let v = cp - 0x10000
            out += [UInt16(0xD800 + (v >> 10)), UInt16(0xDC00 + (v & 0x3FF))]
        }
    }
}
