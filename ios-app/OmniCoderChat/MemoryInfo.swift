import Foundation
import OmniCoderCore
#if canImport(Darwin)
import Darwin
#endif

/// Sizes the KV window from the device's memory with the bundle's paging sidecar (runtimes/kv_budget.py).
enum MemoryInfo {
    /// Share of the memory still available to the app that the KV cache may take.
    static let kvShare = 0.25

    static func availableBytes() -> Int {
        #if os(iOS)
        return Int(os_proc_available_memory())
        #else
        return Int(ProcessInfo.processInfo.physicalMemory / 4)
        #endif
    }

    /// The KV budget of this device: a share of the memory still available to the app.
    static func kvBudgetBytes() -> Int { Int(Double(availableBytes()) * kvShare) }

    static func policy(for bundle: OmniCoderCore.Bundle) throws -> (PagingPolicy, String) {
        guard let sidecar = try bundle.sidecar("kv_paging") else { return (PagingPolicy(pageLen: 64), "KV: contiguous") }
        let budget = try PageBudget(sidecar: sidecar)
        let context = bundle.manifest.model.contextLength
        guard
            let plan = PagingPlan.plan(
                budget, context: 4 * context, budgetBytes: kvBudgetBytes(), modelContext: context)
        else { return (PagingPolicy(pageLen: budget.pageLen), "KV: contiguous (budget too small for paging)") }
        let policy = plan.policy(pageLen: budget.pageLen)
        let note = plan.fitsWhole
            ? "KV: whole context in RAM" : "KV: window \(policy.window) + \(policy.sinkPages) sink page(s) of \(policy.pageLen)"
        return (policy, note)
    }

    /// The memory iOS counts against the app's limit (task_vm_info.phys_footprint, what jetsam and Xcode's memory
    /// gauge use; resident_size also counts clean pages of the mapped weights that iOS can drop), in bytes.
    static func footprintBytes() -> Int {
        #if canImport(Darwin)
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let result = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
            }
        }
        return result == KERN_SUCCESS ? Int(info.phys_footprint) : -1
        #else
        return -1
        #endif
    }

    static func footprintMB() -> Double { Double(footprintBytes()) / 1_048_576 }
}
