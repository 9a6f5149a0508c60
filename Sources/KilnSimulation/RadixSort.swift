/// Sorts a run's waits: half a million a day, all zero or more.
///
/// The bit patterns of doubles that are zero or more order them as their values do, so they sort as
/// unsigned integers, a byte at a time (least significant first, each pass stable), in O(n): a
/// comparison sort of the same waits was 6 % of a run. A byte that every value shares is skipped.
enum RadixSort {
    /// Sorts `values` ascending. Values below zero or not numbers go to the standard sort.
    static func sort(_ values: inout [Double]) {
        guard values.count > 256, values.allSatisfy({ $0 >= 0 }) else {
            values.sort()
            return
        }
        var keys = values.map { ($0 + 0).bitPattern }  // -0 + 0 is +0
        var scratch = [UInt64](repeating: 0, count: keys.count)
        var inScratch = false
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 256) { counts in
            keys.withUnsafeMutableBufferPointer { keys in
                scratch.withUnsafeMutableBufferPointer { scratch in
                    for shift in stride(from: UInt64(0), to: 64, by: 8) {
                        let (source, target) = inScratch ? (scratch, keys) : (keys, scratch)
                        counts.initialize(repeating: 0)
                        for key in source { counts[Int(truncatingIfNeeded: key >> shift) & 0xFF] += 1 }
                        if counts.contains(source.count) { continue }  // one byte value: already in order
                        var start = 0
                        for digit in 0..<256 {
                            let count = counts[digit]
                            counts[digit] = start
                            start += count
                        }
                        for key in source {
                            let digit = Int(truncatingIfNeeded: key >> shift) & 0xFF
                            target[counts[digit]] = key
                            counts[digit] += 1
                        }
                        inScratch.toggle()
                    }
                }
            }
        }
        let sorted = inScratch ? scratch : keys
        for index in values.indices { values[index] = Double(bitPattern: sorted[index]) }
    }
}
