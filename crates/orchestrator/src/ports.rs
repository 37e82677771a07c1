//! Port bookkeeping for the engines we start: host ports (`PORT_RANGE_HOST`)
//! and the engine's in-container HTTP and HTTPS ports (`ACE_HTTP_RANGE`,
//! `ACE_HTTPS_RANGE`).
//!
//! A [`PortAllocator`] hands out each port of its range at most once until it
//! is released. It allocates round-robin from where the last allocation ended,
//! so a port just released (whose container may still be going away, or whose
//! socket lingers) is the last to be handed out again. Containers found at
//! start-up are [`reserve`](PortAllocator::reserve)d from their labels.
//!
//! Host ports can also be taken by programs we know nothing about; Docker then
//! fails the start with [`RuntimeError::PortInUse`](crate::runtime::RuntimeError).
//! [`PortAllocator::allocate_where`] with [`host_port_is_free`] skips the ones
//! that are visibly taken (when the orchestrator runs in the host's network
//! namespace; inside a container that check sees only the container's own ports,
//! and the caller relies on Docker's refusal and a retry).

use std::net::{Ipv4Addr, TcpListener};

use parking_lot::Mutex;

use std::fmt;

/// An inclusive port range written `start-end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("no free port left in {range}")]
    Exhausted { range: PortRange },
}

/// Hands out the ports of one inclusive range, each at most once until released.
/// Thread-safe; every method takes `&self`.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `taken[i]` ⇔ port `range.start + i` is handed out or reserved.
    taken: Vec<bool>,
    /// Index where the next search starts.
    cursor: usize,
    in_use: usize,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            state: Mutex::new(State {
                taken: vec![false; range.len()],
                cursor: 0,
                in_use: 0,
            }),
        }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The next free port of the range.
    pub fn allocate(&self) -> Result<u16, PortError> {
        self.allocate_where(|_| true)
    }

    /// The next free port of the range that `usable` accepts; ports it rejects
    /// stay free (they are asked about again next time). `usable` runs under the
    /// allocator's lock, so it must be quick (a `bind` is).
    pub fn allocate_where(&self, mut usable: impl FnMut(u16) -> bool) -> Result<u16, PortError> {
        let mut state = self.state.lock();
        let len = state.taken.len();
        for step in 0..len {
            let index = (state.cursor + step) % len;
            if state.taken[index] {
                continue;
            }
            let port = self.port_at(index);
            if usable(port) {
                state.taken[index] = true;
                state.in_use += 1;
                state.cursor = (index + 1) % len;
                return Ok(port);
            }
        }
        Err(PortError::Exhausted { range: self.range })
    }

    /// Marks `port` as taken (a container we adopted already uses it). False when
    /// the port is outside the range or already taken.
    pub fn reserve(&self, port: u16) -> bool {
        let Some(index) = self.index_of(port) else {
            return false;
        };
        let mut state = self.state.lock();
        if state.taken[index] {
            return false;
        }
        state.taken[index] = true;
        state.in_use += 1;
        true
    }

    /// Gives `port` back. False when it was not taken (or is outside the range).
    pub fn release(&self, port: u16) -> bool {
        let Some(index) = self.index_of(port) else {
            return false;
        };
        let mut state = self.state.lock();
        if !state.taken[index] {
            return false;
        }
        state.taken[index] = false;
        state.in_use -= 1;
        true
    }

    pub fn is_taken(&self, port: u16) -> bool {
        self.index_of(port)
            .is_some_and(|index| self.state.lock().taken[index])
    }

    /// Ports handed out or reserved.
    pub fn in_use(&self) -> usize {
        self.state.lock().in_use
    }

    /// Ports still free.
    pub fn available(&self) -> usize {
        self.range.len() - self.in_use()
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        self.range
            .contains(port)
            .then(|| usize::from(port - self.range.start))
    }

    fn port_at(&self, index: usize) -> u16 {
        // index < range.len() <= 65536 - start, so this fits.
        self.range.start + index as u16
    }
}

/// True when nothing on this network namespace listens on `0.0.0.0:port`
/// (the address Docker publishes on). Binds and closes at once.
pub fn host_port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// The ports of one engine container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnginePortSet {
    /// Published host port of the engine's HTTP API.
    pub host_http: u16,
    /// The engine's HTTP port inside the container (`--http-port`).
    pub container_http: u16,
    /// The engine's HTTPS port inside the container (`--https-port`).
    pub container_https: u16,
    /// Published host port of the HTTPS port, when `ACE_MAP_HTTPS` is on.
    pub host_https: Option<u16>,
}

/// The three allocators an engine takes its ports from.
#[derive(Debug)]
pub struct EnginePorts {
    pub host: PortAllocator,
    pub http: PortAllocator,
    pub https: PortAllocator,
}

impl EnginePorts {
    pub fn new(host: PortRange, http: PortRange, https: PortRange) -> Self {
        Self {
            host: PortAllocator::new(host),
            http: PortAllocator::new(http),
            https: PortAllocator::new(https),
        }
    }

    /// Ports for a new engine: all of them or none (what was taken before a
    /// range ran out is given back). Host ports visibly in use are skipped.
    pub fn allocate(&self, map_https: bool) -> Result<EnginePortSet, PortError> {
        let host_http = self.host.allocate_where(host_port_is_free)?;
        let container_http = match self.http.allocate() {
            Ok(port) => port,
            Err(e) => {
                self.host.release(host_http);
                return Err(e);
            }
        };
        let container_https = match self.https.allocate() {
            Ok(port) => port,
            Err(e) => {
                self.host.release(host_http);
                self.http.release(container_http);
                return Err(e);
            }
        };
        let host_https = if map_https {
            match self.host.allocate_where(host_port_is_free) {
                Ok(port) => Some(port),
                Err(e) => {
                    self.host.release(host_http);
                    self.http.release(container_http);
                    self.https.release(container_https);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(EnginePortSet {
            host_http,
            container_http,
            container_https,
            host_https,
        })
    }

    /// Marks the ports of an adopted container as taken. Ports outside their
    /// range (a container started with other settings) are ignored.
    pub fn reserve(&self, ports: &EnginePortSet) {
        self.host.reserve(ports.host_http);
        self.http.reserve(ports.container_http);
        self.https.reserve(ports.container_https);
        if let Some(port) = ports.host_https {
            self.host.reserve(port);
        }
    }

    pub fn release(&self, ports: &EnginePortSet) {
        self.host.release(ports.host_http);
        self.http.release(ports.container_http);
        self.https.release(ports.container_https);
        if let Some(port) = ports.host_https {
            self.host.release(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    #[test]
    fn hands_out_every_port_once_then_runs_out() {
        let ports = PortAllocator::new(range(100, 104));
        let got: Vec<u16> = (0..5).map(|_| ports.allocate().unwrap()).collect();
        assert_eq!(got, vec![100, 101, 102, 103, 104]);
        assert_eq!(
            ports.allocate(),
            Err(PortError::Exhausted {
                range: range(100, 104)
            })
        );
        assert_eq!(
            ports.allocate().unwrap_err().to_string(),
            "no free port left in 100-104"
        );
        assert_eq!(ports.available(), 0);
    }

    #[test]
    fn released_ports_come_back_last() {
        let ports = PortAllocator::new(range(10, 13));
        assert_eq!(ports.allocate(), Ok(10));
        assert_eq!(ports.allocate(), Ok(11));
        assert!(ports.release(10));
        assert!(!ports.release(10), "a second release is a no-op");
        // Round robin: 12 and 13 before the released 10.
        assert_eq!(ports.allocate(), Ok(12));
        assert_eq!(ports.allocate(), Ok(13));
        assert_eq!(ports.allocate(), Ok(10));
        assert!(ports.allocate().is_err());
    }

    #[test]
    fn reserve_takes_a_port_out_of_circulation() {
        let ports = PortAllocator::new(range(1, 3));
        assert!(ports.reserve(2));
        assert!(!ports.reserve(2), "already reserved");
        assert!(!ports.reserve(4), "outside the range");
        assert!(!ports.reserve(0));
        assert!(ports.is_taken(2));
        assert_eq!(ports.allocate(), Ok(1));
        assert_eq!(ports.allocate(), Ok(3));
        assert!(ports.allocate().is_err());
        assert!(!ports.release(9), "outside the range");
    }

    #[test]
    fn allocate_where_skips_rejected_ports_without_taking_them() {
        let ports = PortAllocator::new(range(50, 53));
        assert_eq!(ports.allocate_where(|p| p != 50 && p != 51), Ok(52));
        assert!(!ports.is_taken(50));
        assert_eq!(ports.allocate(), Ok(53));
        assert_eq!(ports.allocate(), Ok(50));
        assert!(ports.allocate_where(|_| false).is_err());
        assert_eq!(ports.allocate(), Ok(51));
    }

    #[test]
    fn whole_u16_range_ends_work() {
        let top = PortAllocator::new(range(65534, 65535));
        assert_eq!(top.allocate(), Ok(65534));
        assert_eq!(top.allocate(), Ok(65535));
        assert!(top.allocate().is_err());
        assert!(top.release(65535));
        assert_eq!(top.allocate(), Ok(65535));

        let single = PortAllocator::new(range(1, 1));
        assert_eq!(single.allocate(), Ok(1));
        assert!(single.allocate().is_err());
    }

    /// A small deterministic generator (xorshift) so the property test needs no
    /// extra crate and every failure is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random allocate / reserve / release sequences checked against a model:
    /// no port is handed out twice, every port is in range, a release makes the
    /// port usable again, and the allocator runs out exactly when the model does.
    #[test]
    fn random_operations_match_a_set_model() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let start = 1000 + rng.below(50) as u16;
            let len = 1 + rng.below(40);
            let r = range(start, start + len as u16 - 1);
            let ports = PortAllocator::new(r);
            let mut model: HashSet<u16> = HashSet::new();
            for _ in 0..400 {
                match rng.below(4) {
                    0 | 1 => match ports.allocate() {
                        Ok(port) => {
                            assert!(r.contains(port), "seed {seed}: {port} outside {r}");
                            assert!(model.insert(port), "seed {seed}: {port} handed out twice");
                        }
                        Err(PortError::Exhausted { range }) => {
                            assert_eq!(range, r);
                            assert_eq!(model.len(), r.len(), "seed {seed}: exhausted too early");
                        }
                    },
                    2 => {
                        // Reserve some port near the range (in or out of it).
                        let port = start.saturating_sub(2) + rng.below(len + 4) as u16;
                        let expected = r.contains(port) && !model.contains(&port);
                        assert_eq!(ports.reserve(port), expected, "seed {seed}: reserve {port}");
                        if expected {
                            model.insert(port);
                        }
                    }
                    _ => {
                        if model.is_empty() {
                            continue;
                        }
                        let held: Vec<u16> = model.iter().copied().collect();
                        let port = held[rng.below(held.len())];
                        assert!(ports.release(port), "seed {seed}: release {port}");
                        model.remove(&port);
                        assert!(!ports.is_taken(port));
                    }
                }
                assert_eq!(ports.in_use(), model.len(), "seed {seed}");
                assert_eq!(ports.available(), r.len() - model.len(), "seed {seed}");
            }
            // Whatever is free can still be handed out, each port once.
            while let Ok(port) = ports.allocate() {
                assert!(r.contains(port));
                assert!(model.insert(port), "seed {seed}: {port} handed out twice");
            }
            assert_eq!(model.len(), r.len());
        }
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let ports = Arc::new(PortAllocator::new(range(20000, 20999)));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let ports = Arc::clone(&ports);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    let mut allocated = 0;
                    while let Ok(port) = ports.allocate() {
                        mine.push(port);
                        allocated += 1;
                        // Give one back every 7th allocation, to churn the cursor
                        // (counting allocations, not holdings, so the loop ends).
                        if allocated % 7 == 0 {
                            let back = mine.remove(0);
                            assert!(ports.release(back));
                        }
                        if mine.len() > 200 {
                            break;
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            for port in handle.join().unwrap() {
                assert!((20000..=20999).contains(&port));
                assert!(all.insert(port), "{port} held by two threads");
            }
        }
        assert_eq!(ports.in_use(), all.len());
    }

    /// Two neighbouring host ports nobody listens on now: host ports are
    /// checked against the machine's listeners, so a fixed pair would fail
    /// the test whenever another program (or test) held one of them.
    fn free_host_pair() -> PortRange {
        (41000..60000)
            .step_by(2)
            .map(|start| range(start, start + 1))
            .find(|pair| host_port_is_free(pair.start) && host_port_is_free(pair.end))
            .expect("two neighbouring free ports between 41000 and 60000")
    }

    #[test]
    fn engine_ports_are_all_or_nothing() {
        let host = free_host_pair();
        let ports = EnginePorts::new(host, range(40200, 40202), range(40300, 40300));
        let first = ports.allocate(false).unwrap();
        assert!((host.start..=host.end).contains(&first.host_http));
        assert_eq!(first.container_http, 40200);
        assert_eq!(first.container_https, 40300);
        assert_eq!(first.host_https, None);
        // The https range is exhausted: nothing else stays taken.
        assert_eq!(
            ports.allocate(false),
            Err(PortError::Exhausted {
                range: range(40300, 40300)
            })
        );
        assert_eq!(ports.host.in_use(), 1);
        assert_eq!(ports.http.in_use(), 1);
        ports.release(&first);
        assert_eq!(ports.host.in_use(), 0);
        assert_eq!(ports.http.in_use(), 0);
        assert_eq!(ports.https.in_use(), 0);

        let mapped = ports.allocate(true).unwrap();
        let host_https = mapped.host_https.unwrap();
        assert_ne!(host_https, mapped.host_http);
        assert_eq!(ports.host.in_use(), 2);
        ports.release(&mapped);

        ports.reserve(&first);
        assert!(ports.host.is_taken(first.host_http));
        assert!(ports.https.is_taken(first.container_https));
    }

    #[test]
    fn host_port_check_sees_a_listener() {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!host_port_is_free(port));
        drop(listener);
        assert!(host_port_is_free(port));
    }
}
