import Foundation
#if canImport(CryptoKit)
import CryptoKit
#else
import CLibCrypto
#endif

/// SHA-256 of a file, read in chunks.
public enum FileDigest {
    public static func sha256Hex(of url: URL, chunk: Int = 1 << 20) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        let hasher = SHA256Hasher()
        while let data = try handle.read(upToCount: chunk), !data.isEmpty { hasher.update(data) }
        return hasher.hexDigest()
    }
}

/// Streaming SHA-256: CryptoKit on Apple platforms, OpenSSL's libcrypto on Linux (Package.swift says why).
public final class SHA256Hasher {
    #if canImport(CryptoKit)
    private var state = CryptoKit.SHA256()
    #else
    private let context: OpaquePointer = EVP_MD_CTX_new()
    #endif

    public init() {
        #if !canImport(CryptoKit)
        precondition(EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1, "EVP_DigestInit_ex(sha256) failed")
        #endif
    }

    #if !canImport(CryptoKit)
    deinit { EVP_MD_CTX_free(context) }
    #endif

    public func update<Bytes: ContiguousBytes>(_ bytes: Bytes) {
        bytes.withUnsafeBytes { buffer in
            #if canImport(CryptoKit)
            state.update(bufferPointer: buffer)
            #else
            precondition(EVP_DigestUpdate(context, buffer.baseAddress, buffer.count) == 1, "EVP_DigestUpdate failed")
            #endif
        }
    }

    /// The lowercase hex digest; the hasher takes no more input afterwards.
    public func hexDigest() -> String {
        #if canImport(CryptoKit)
        let digest = Array(state.finalize())
        #else
        var digest = [UInt8](repeating: 0, count: 32)
        precondition(EVP_DigestFinal_ex(context, &digest, nil) == 1, "EVP_DigestFinal_ex failed")
        #endif
        return digest.map { String(format: "%02x", $0) }.joined()
    }
}
