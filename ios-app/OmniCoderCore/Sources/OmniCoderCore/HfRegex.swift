import Foundation

/// Oniguruma patterns (what the `tokenizers` library compiles a tokenizer.json's `Split` regex with) as ICU
/// patterns for NSRegularExpression. `\s`, `\d`, `\w` are spelled out as Oniguruma's Unicode classes (`\s`:
/// White_Space, U+0009-000D, U+0020, U+0085, U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000),
/// as the Kotlin core does, so that both cores match the same text whatever their engine's defaults.
enum OnigPattern {
    static let space = "\\t\\n\\u000B\\f\\r\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
    static let word = "\\p{L}\\p{M}\\p{N}\\p{Pc}"
    /// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
    static let gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

    static func compile(_ onig: String) throws -> NSRegularExpression {
        do {
            return try NSRegularExpression(pattern: try translate(onig), options: [])
        } catch let error as TokenizerError {
            throw error
        } catch {
            throw TokenizerError("tokenizer.json's Split regex does not compile here: \(onig)")
        }
    }

    static func literal(_ text: String) throws -> NSRegularExpression {
        try NSRegularExpression(pattern: NSRegularExpression.escapedPattern(for: text), options: [])
    }

    /// The pattern with `\s \S \d \D \w \W` spelled out (inside a character class too, except the negated ones).
    static func translate(_ onig: String) throws -> String {
        var out = ""
        var depth = 0
        let chars = Array(onig.unicodeScalars)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "\\" && i + 1 < chars.count {
                let e = chars[i + 1]
                let inClass = depth > 0
                switch e {
                case "s": out += inClass ? space : "[\(space)]"
                case "d": out += "\\p{Nd}"
                case "D": out += "\\P{Nd}"
                case "w": out += inClass ? word : "[\(word)]"
                case "S", "W":
                    if inClass { throw TokenizerError("tokenizer.json's Split regex uses \\\(e) inside a class: \(onig)") }
                    out += e == "S" ? "[^\(space)]" : "[^\(word)]"
                default:
                    out.unicodeScalars.append(c)
                    out.unicodeScalars.append(e)
                }
                i += 2
                continue
            }
            if c == "[" { depth += 1 }
            if c == "]" && depth > 0 { depth -= 1 }
            out.unicodeScalars.append(c)
            i += 1
        }
        return out
    }
}

/// A regex match or the text between two, in UTF-16 offsets (`find_matches` of the tokenizers library).
struct Span {
    var start: Int
    var end: Int
    var isMatch: Bool
}

func findSpans(_ regex: NSRegularExpression, _ text: String) -> [Span] {
    let length = text.utf16.count
    if length == 0 { return [Span(start: 0, end: 0, isMatch: false)] }
    var out: [Span] = []
    var prev = 0
    for m in regex.matches(in: text, options: [], range: NSRange(location: 0, length: length)) {
        let r = m.range
        if prev != r.location { out.append(Span(start: prev, end: r.location, isMatch: false)) }
        out.append(Span(start: r.location, end: r.location + r.length, isMatch: true))
        prev = r.location + r.length
    }
    if prev != length { out.append(Span(start: prev, end: length, isMatch: false)) }
    return out
}

/// Each scalar for which `test` holds is a match of its own (the tokenizers library's char patterns).
func findScalarSpans(_ text: String, _ test: (Unicode.Scalar) -> Bool) -> [Span] {
    if text.isEmpty { return [Span(start: 0, end: 0, isMatch: false)] }
    var out: [Span] = []
    var last = 0
    var i = 0
    for s in text.unicodeScalars {
        let next = i + UTF16.width(s)
        if test(s) {
            if last < i { out.append(Span(start: last, end: i, isMatch: false)) }
            out.append(Span(start: i, end: next, isMatch: true))
            last = next
        }
        i = next
    }
    if i > last { out.append(Span(start: last, end: i, isMatch: false)) }
    return out
}


/// The pieces of `text` that a SplitDelimiterBehavior keeps (`NormalizedString::split`).
func splitBy(_ text: String, _ spans: [Span], _ behavior: String) throws -> [String] {
    var kept: [(Int, Int)] = []
    switch behavior {
    case "Isolated": kept = spans.map { ($0.start, $0.end) }
    case "Removed": kept = spans.filter { !$0.isMatch }.map { ($0.start, $0.end) }
    case "Contiguous", "MergedWithPrevious":
        var previous = false
        for s in spans {
            let merge = behavior == "Contiguous" ? s.isMatch == previous : s.isMatch && !previous
            if merge && !kept.isEmpty { kept[kept.count - 1].1 = s.end } else { kept.append((s.start, s.end)) }
            previous = s.isMatch
        }
    case "MergedWithNext":
        var previous = false
        for s in spans.reversed() {
            if s.isMatch && !previous && !kept.isEmpty { kept[kept.count - 1].0 = s.start } else { kept.append((s.start, s.end)) }
            previous = s.isMatch
        }
        kept.reverse()
    default: throw TokenizerError("split behavior \(behavior) is not supported")
    }
    let ns = text as NSString  // slices at scalar boundaries (a String range would round to grapheme boundaries)
    return kept.map { ns.substring(with: NSRange(location: $0.0, length: $0.1 - $0.0)) }
}
