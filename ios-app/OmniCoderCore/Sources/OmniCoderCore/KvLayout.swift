import Foundation

/// Names, widths and dtypes of a bundle's KV tensors from the manifest's graph.kv (runtimes/kv_format.py KVLayout).
public struct KvLayout {
    public let heads: Int
    public let keyDim: Int
    public let valueDim: Int
    public let kvDtype: String
    public private(set) var inputs: [String] = []
    public private(set) var outputs: [String] = []
    public private(set) var widths: [Int] = []
    public private(set) var dtypes: [String] = []
    public private(set) var keySlots: [[String]] = []

    private struct Component {
        let suffix: String
        let dtype: String
        let width: Int?
    }

    /// `storageDtype` overrides the tensors' dtype of an unquantized layout (Core ML streams KV as float16).
    public init(kv: [String: Any], nLayers: Int, storageDtype: String? = nil) throws {
        guard let heads = kv["heads"] as? Int, let keyDim = kv["key_dim"] as? Int, let valueDim = kv["value_dim"] as? Int,
            let pastKey = kv["past_key"] as? String, let presentKey = kv["present_key"] as? String
        else { throw BundleError(kind: .invalid, message: "manifest.json graph.kv is incomplete; re-export the bundle") }
        self.heads = heads
        self.keyDim = keyDim
        self.valueDim = valueDim
        let storage = kv["storage"] as? [String: Any]
        kvDtype = storage?["dtype"] as? String ?? "fp32"
        func components(_ key: String) -> [Component]? {
            guard let list = storage?[key] as? [[String: Any]], !list.isEmpty else { return nil }
            return list.map { Component(suffix: $0["suffix"] as? String ?? "", dtype: $0["dtype"] as? String ?? "float32", width: $0["width"] as? Int) }
        }
        let plain = [Component(suffix: "", dtype: "float32", width: nil)]
        let keyParts = components("key_components") ?? plain
        let valueParts = components("value_components") ?? plain
        let pastValue = (kv["past_value"] as? String).flatMap { $0.isEmpty ? nil : $0 }
        let presentValue = kv["present_value"] as? String ?? ""
        for layer in 0..<nLayers {
            var slots = [(pastKey, presentKey, keyDim, keyParts)]
            if let pastValue { slots.append((pastValue, presentValue, valueDim, valueParts)) }
            for (past, present, width, parts) in slots {
                var names: [String] = []
                for part in parts {
                    names.append(past.replacingOccurrences(of: "{layer}", with: String(layer)) + part.suffix)
                    inputs.append(names.last!)
                    outputs.append(present.replacingOccurrences(of: "{layer}", with: String(layer)) + part.suffix)
                    widths.append(part.width ?? width)
                    dtypes.append(storageDtype ?? part.dtype)
                }
                if past == pastKey { keySlots.append(names) }
            }
        }
    }

    public static func itemSize(_ dtype: String) -> Int {
        switch dtype {
        case "float32": return 4
        case "float16": return 2
        default: return 1
        }
    }

    /// Bytes of one stored row (one head, one token) of input `index`.
    public func rowBytes(_ index: Int) -> Int { widths[index] * KvLayout.itemSize(dtypes[index]) }

    /// Stored KV bytes of one token over all layers.
    public func bytesPerToken() -> Int { inputs.indices.reduce(0) { $0 + heads * rowBytes($1) } }
}
