import MigrationStream
import DeviceSpecs
import Glibc
import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// One save session: the outgoing stream, produced lazily as the client reads.
///
/// RAM tracking (docs/migration.md, "Dirty RAM"): the client writes the RAM BAR
/// through its own mmap, which we cannot observe, so PRE_COPY remembers an XXH3
/// (seeded per session) of every page as it was sent, and each new round — started
/// by a PRECOPY_INFO query once the queue is empty — rehashes the RAM and queues the
/// pages whose hash changed. STOP_COPY after PRE_COPY does a last rehash with the
/// device stopped, then sends those pages, the core and device state, and END.
final class SaveSession {
    unowned let model: MigratableVF
    let preCopy: Bool
    let pageSize: Int
    let pages: Int
    let seed: UInt64
    private var seq: UInt32 = 0
    private var chain = XXH3()
    private(set) var emitted: UInt64 = 0
    private var out: [UInt8] = []          // a built record not yet fully read
    private var outPos = 0
    private var queued: [Bool]
    private var queuedCount: Int
    private var cursor = 0
    private var sentHash: [UInt64]
    private var sent: [Bool]
    private var initialPass = true
    private var final = false
    private var finalState: (core: [UInt8], device: [UInt8])?
    private var finalWritten = false
    private var endWritten = false
    // The RAM record being emitted.
    private var ramCursor = 0               // byte offset into RAM of the next data byte
    private var ramLeft = 0                 // data bytes left in the record
    private var recordHash = XXH3()
    private let pageHasher: XXH3.Seeded
    private var pageHash: XXH3        // a page that straddles two reads
    private var scratch: [UInt8] = []
    static let runPages = 256
    /// RAM goes out in pieces this big, each checksummed and sent while it is still in
    /// the L2 cache: smaller pieces cost a syscall each, larger ones a trip to memory.
    static let pieceSize = 256 << 10

    init(model: MigratableVF, preCopy: Bool) {
        self.model = model
        self.preCopy = preCopy
        pageSize = model.pageSize
        pages = model.pageCount
        seed = UInt64.random(in: 1...UInt64.max)
        pageHasher = XXH3.Seeded(seed: seed)
        pageHash = XXH3(seed: seed)
        queued = [Bool](repeating: true, count: pages)
        queuedCount = pages
        sentHash = preCopy ? [UInt64](repeating: 0, count: pages) : []
        sent = preCopy ? [Bool](repeating: false, count: pages) : []
        emitRecord(.begin, model.beginPayload())
        var sz = [UInt8](repeating: 0, count: 8)
        sz.setLE64(UInt64(model.ram.size), at: 0)
        emitRecord(.stopCopySize, sz, flags: MigrationRecord.optionalFlag)
    }

    private func emitRecord(_ tag: MigrationRecord.Tag, _ payload: [UInt8], flags: UInt16 = 0) {
        let (bytes, sum) = MigrationRecord.encode(tag: tag, flags: flags, payload: payload, seq: seq)
        seq += 1
        if tag != .end {
            var t = [UInt8](repeating: 0, count: 8)
            t.setLE64(sum, at: 0)
            chain.update(t)
        }
        if outPos == out.count { out = bytes; outPos = 0 } else { out.append(contentsOf: bytes) }
    }

    /// The STOP_COPY snapshot: a last rehash, then core and device state.
    func finalize(core: [UInt8], state: [UInt8]) {
        if preCopy { rescan() }
        final = true
        finalState = (core, state)
    }

    /// Queues every page whose content changed since it was sent.
    private func rescan() {
        let base = UInt(bitPattern: model.ram.mapping.base)
        let (pageSize, hasher) = (self.pageSize, pageHasher)
        // Sent pages not queued again yet: the ones to look at.
        let watched = (0..<pages).filter { sent[$0] && !queued[$0] }
        let changed = sentHash.withUnsafeBufferPointer { hashes -> [Int] in
            let hashesAt = UInt(bitPattern: hashes.baseAddress)
            // Memory-bound: a second thread takes half the pages (15 -> 9 ms per 256 MiB
            // here), which matters in STOP_COPY, where the rescan is downtime.
            let parts = watched.count * pageSize >= Self.parallelRescanBytes && Self.cores > 1 ? 2 : 1
            let cut = watched.count / parts
            return Self.parallel(parts) { part in
                let hashes = UnsafePointer<UInt64>(bitPattern: hashesAt)!
                let ram = UnsafeRawPointer(bitPattern: base)!
                var found: [Int] = []
                for p in watched[(part * cut)..<(part == parts - 1 ? watched.count : (part + 1) * cut)] {
                    if hasher.hash(UnsafeRawBufferPointer(start: ram + p * pageSize, count: pageSize)) != hashes[p] {
                        found.append(p)
                    }
                }
                return found
            }.flatMap { $0 }
        }
        for p in changed { queued[p] = true }
        queuedCount += changed.count
        cursor = 0
    }

    static let parallelRescanBytes = 16 << 20
    static let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))

    /// Runs `body(0..<parts)`, part 0 on this thread and the others on threads of
    /// their own, and returns the results in order.
    private static func parallel<T: Sendable>(_ parts: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
        let others = (1..<max(parts, 1)).map { part in
            let done = Completion<T>()
            spawnThread(name: "vfu-rescan") { done.fulfil(body(part)) }
            return done
        }
        return [body(0)] + others.map { $0.wait() }
    }

    private var inFlight: UInt64 { UInt64(out.count - outPos) + UInt64(ramLeft) }

    func pending(rescan allowed: Bool) -> (initial: UInt64, dirty: UInt64) {
        let queuedBytes = UInt64(queuedCount * pageSize) + inFlight
        if initialPass && queuedBytes > 0 { return (queuedBytes, 0) }
        initialPass = false
        if queuedBytes == 0 && allowed && !final { rescan() }
        return (0, UInt64(queuedCount * pageSize) + inFlight)
    }

    /// The next run of queued pages (up to 1 MiB), dequeued.
    private func nextRun() -> (first: Int, count: Int)? {
        guard queuedCount > 0 else { return nil }
        while cursor < pages && !queued[cursor] { cursor += 1 }
        guard cursor < pages else { return nil }
        let first = cursor
        var n = 0
        while cursor < pages && queued[cursor] && n < Self.runPages {
            queued[cursor] = false
            cursor += 1
            n += 1
        }
        queuedCount -= n
        return (first, n)
    }

    func read(into dst: inout [UInt8], max: Int) {
        produce(max: max) { piece in
            dst.append(contentsOf: piece.bytes)
            return true
        }
    }

    /// Hands out up to `max` bytes of the stream, in order, as pieces: framing from
    /// our own buffer, RAM straight from the BAR mapping (checksummed there, with no
    /// copy; stable once the device is stopped). `sink` must consume each piece before
    /// returning; false stops early. Returns the bytes handed out.
    @discardableResult
    func produce(max: Int, _ sink: (MigrationDataPiece) -> Bool) -> Int {
        var budget = max
        let base = model.ram.mapping.base
        while budget > 0 {
            if outPos < out.count {
                let n = min(budget, out.count - outPos)
                let ok = out.withUnsafeBytes { sink(MigrationDataPiece(UnsafeRawBufferPointer(rebasing: $0[outPos..<(outPos + n)]))) }
                guard ok else { break }
                outPos += n; budget -= n; emitted += UInt64(n)
                continue
            }
            if ramLeft > 0 {
                // Pieces hashed and sent while still in cache. While the device runs
                // (PRE_COPY) the RAM may change under us, so the piece is copied first and
                // the copy is what is hashed and sent. Once stopped (STOP_COPY) it goes
                // straight from the mapping, and is hashed after the sink has read it (a
                // copying sink leaves it in cache; a zero-copy one never reads it at all).
                let n = min(budget, ramLeft, Self.pieceSize)
                let live = UnsafeRawBufferPointer(start: base + ramCursor, count: n)
                let ok: Bool
                if final {
                    ok = sink(MigrationDataPiece(live, isStable: true))
                    if ok { recordHash.update(live) }
                } else {
                    scratch.removeAll(keepingCapacity: true)
                    scratch.append(contentsOf: live)
                    ok = scratch.withUnsafeBytes { piece in
                        recordHash.update(piece)
                        if preCopy { trackPages(piece) }
                        return sink(MigrationDataPiece(piece))
                    }
                }
                guard ok else { break }
                ramCursor += n; ramLeft -= n; budget -= n; emitted += UInt64(n)
                if ramLeft == 0 {
                    let sum = recordHash.digest()
                    var t = [UInt8](repeating: 0, count: 8)
                    t.setLE64(sum, at: 0)
                    chain.update(t)
                    out = t
                    outPos = 0
                }
                continue
            }
            if let run = nextRun() {
                let length = run.count * pageSize
                var h = MigrationRecord.header(tag: MigrationRecord.Tag.ram.rawValue, length: UInt64(8 + length), seq: seq)
                seq += 1
                var off = [UInt8](repeating: 0, count: 8)
                off.setLE64(UInt64(run.first * pageSize), at: 0)
                h.append(contentsOf: off)
                recordHash = XXH3()
                recordHash.update(h)
                out = h
                outPos = 0
                ramCursor = run.first * pageSize
                ramLeft = length
                pageHash = XXH3(seed: seed)
                continue
            }
            if initialPass { initialPass = false }
            guard final else { break }
            if !finalWritten, let s = finalState {
                finalWritten = true
                emitRecord(.core, s.core)
                emitRecord(.device, s.device)
                continue
            }
            if !endWritten {
                endWritten = true
                var p = [UInt8](repeating: 0, count: 24)
                p.setLE32(seq, at: 0)
                p.setLE64(emitted, at: 8)
                p.setLE64(chain.digest(), at: 16)
                emitRecord(.end, p)
                continue
            }
            break
        }
        return max - budget
    }

    /// Records the hash of each page as sent. A page inside the piece is hashed in one
    /// shot; one that straddles two reads goes through the streaming hash.
    private func trackPages(_ piece: UnsafeRawBufferPointer) {
        var at = 0
        // ramCursor has not advanced yet: the piece starts at ramCursor.
        var pos = ramCursor
        while at < piece.count {
            let inPage = pos % pageSize
            let n = min(pageSize - inPage, piece.count - at)
            let part = UnsafeRawBufferPointer(rebasing: piece[at..<(at + n)])
            at += n; pos += n
            if inPage == 0 && n == pageSize {
                sentHash[pos / pageSize - 1] = pageHasher.hash(part)
                sent[pos / pageSize - 1] = true
                continue
            }
            pageHash.update(part)
            if pos % pageSize == 0 {
                let p = pos / pageSize - 1
                sentHash[p] = pageHash.digest()
                sent[p] = true
                pageHash = XXH3(seed: seed)
            }
        }
    }
}
