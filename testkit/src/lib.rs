//! Loopback ports for the tests and benchmarks that start real servers.
//!
//! The usual trick (bind port 0, read the port, close the socket) leaves a
//! window between closing and the server's own bind. Within it the kernel
//! may give the same port to the next caller of port 0 or to an outgoing
//! connection, and tests running side by side then talk to each other's
//! servers. [`free_port`] closes that window: it hands out ports below the
//! kernel's ephemeral range, which the kernel never assigns by itself, and
//! never the same port twice within one process.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out; the ports below are left to system services.
const LOWEST: u16 = 10_000;

/// Where the kernel's ephemeral range starts when it cannot be read (the
/// Linux default; the IANA range used elsewhere starts higher).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Fewer ports than this below the ephemeral range: ask the kernel instead.
const MIN_SPAN: u16 = 1_000;

struct Handed {
    next: Option<u16>,
    kernel_assigned: BTreeSet<u16>,
}

static HANDED: Mutex<Handed> = Mutex::new(Handed {
    next: None,
    kernel_assigned: BTreeSet::new(),
});

/// A port on 127.0.0.1 that is free now, that the kernel will not assign to
/// anyone else, and that this process has not handed out before.
///
/// Ports come in order from an offset derived from the process id, so test
/// binaries that run one after another start in different places.
///
/// # Panics
///
/// When no port in the range is free.
pub fn free_port() -> u16 {
    let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
    let high = ephemeral_start();
    if high < LOWEST.saturating_add(MIN_SPAN) {
        return kernel_assigned(&mut handed.kernel_assigned);
    }
    let span = high - LOWEST;
    let mut candidate = handed.next.unwrap_or_else(|| {
        let offset = (u64::from(std::process::id()) * 7_919) % u64::from(span);
        LOWEST + offset as u16
    });
    for _ in 0..span {
        let port = candidate;
        candidate = if port + 1 >= high { LOWEST } else { port + 1 };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.next = Some(candidate);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOWEST}..{high}");
}

/// The first port of the kernel's ephemeral range (Linux), or the default.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// Fallback when the ephemeral range leaves no room below it: a port the
/// kernel picks, never the same one twice in this process.
fn kernel_assigned(seen: &mut BTreeSet<u16>) -> u16 {
    for _ in 0..1_000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        if seen.insert(port) {
            return port;
        }
    }
    panic!("the kernel kept assigning ports already handed out");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        let high = ephemeral_start();
        if high >= LOWEST + MIN_SPAN {
            assert!(
                ports.iter().all(|p| (LOWEST..high).contains(p)),
                "{ports:?}"
            );
        }
        for port in ports.iter().take(20) {
            TcpListener::bind(("127.0.0.1", *port)).expect("the port is still free");
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let first = free_port();
        // Hold the next port in line: the one after it must come next.
        let held = TcpListener::bind(("127.0.0.1", first + 1));
        let second = free_port();
        match held {
            Ok(_) => assert_ne!(second, first + 1),
            Err(_) => assert_ne!(second, first),
        }
        assert_ne!(second, first);
    }
}
