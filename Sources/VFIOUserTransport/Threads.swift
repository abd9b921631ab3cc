import Glibc

/// Starts a detached OS thread running `body`.
///
/// Blocking socket I/O lives on its own OS thread, one per connection: on a
/// 2-core machine two Tasks blocked in read() would stall the cooperative pool
/// (swift-on-linux.md). Must be called from nonisolated code.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) {
            self.body = body
            self.name = name
        }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        setCurrentThreadName(b.name)
        b.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    pthread_detach(tid)
}

