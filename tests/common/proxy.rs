//! A loopback TCP proxy in front of a real service, for fault tests: cut every connection (and refuse new ones),
//! stall them (bytes stop flowing, no FIN, like a dead peer or a partition), stall one connection picked by its
//! upstream port (as `pg_stat_activity.client_port` shows it), throttle the bandwidth, and restore.
//!
//! Include after `services.rs`: `#[path = "common/proxy.rs"] mod proxy;`. Traffic stays on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Forward,
    /// Forward nothing, close nothing: every connection, current and new, hangs.
    Stall,
    /// Close every connection; accept new ones only to close them at once.
    Cut,
}

/// One forwarded connection.
#[derive(Clone, Debug)]
pub struct Conn {
    /// Local port of the proxy's connection to the target (the client port the target sees).
    pub upstream_port: u16,
    stalled: watch::Sender<bool>,
}

struct Shared {
    mode: watch::Sender<Mode>,
    /// Bytes per second per direction and connection; 0 = unlimited.
    rate: watch::Sender<u64>,
    conns: Mutex<Vec<Conn>>,
    tasks: Mutex<JoinSet<()>>,
}

/// The proxy; stops (closing everything) when dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral 127.0.0.1 port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FaultProxy::serve(listener, target)
    }

    /// Like [`FaultProxy::start`] on a given port (for a service that must advertise the proxy's address).
    pub async fn start_on(port: u16, target: &str) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        FaultProxy::serve(listener, target)
    }

    fn serve(listener: TcpListener, target: &str) -> FaultProxy {
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mode: watch::channel(Mode::Forward).0,
            rate: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let target = target.to_owned();
        let s = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { break };
                if *s.mode.borrow() == Mode::Cut {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(&target).await else { continue };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let conn = Conn {
                    upstream_port: outbound.local_addr().map(|a| a.port()).unwrap_or(0),
                    stalled: watch::channel(false).0,
                };
                s.conns.lock().unwrap().push(conn.clone());
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let mut tasks = s.tasks.lock().unwrap();
                tasks.spawn(pump(ri, wo, Arc::clone(&s), conn.clone()));
                tasks.spawn(pump(ro, wi, Arc::clone(&s), conn));
            }
        });
        FaultProxy { port, shared, accept }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.shared.mode.send_replace(Mode::Cut);
        self.shared.tasks.lock().unwrap().abort_all();
        self.shared.conns.lock().unwrap().clear();
    }

    /// Every connection, current and new, stops forwarding without closing, until [`FaultProxy::restore`].
    pub fn stall(&self) {
        self.shared.mode.send_replace(Mode::Stall);
    }

    /// Stalls the one connection whose upstream (proxy-to-target) local port is `upstream_port`, for good.
    /// `false` when there is none.
    pub fn stall_connection(&self, upstream_port: u16) -> bool {
        let conns = self.shared.conns.lock().unwrap();
        match conns.iter().find(|c| c.upstream_port == upstream_port) {
            Some(c) => {
                c.stalled.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Forwards again (stalled connections resume, like a healed partition; individually stalled ones do not).
    pub fn restore(&self) {
        self.shared.mode.send_replace(Mode::Forward);
    }

    /// Limits each direction of each connection to `bytes_per_sec` (0: unlimited).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.shared.rate.send_replace(bytes_per_sec);
    }

    /// Upstream ports of the connections forwarded so far (current ones, unless cut since).
    pub fn upstream_ports(&self) -> Vec<u16> {
        self.shared.conns.lock().unwrap().iter().map(|c| c.upstream_port).collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.tasks.lock().unwrap().abort_all();
    }
}

/// Copies one direction, holding bytes while stalled and pacing them while throttled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    conn: Conn,
) {
    let mut mode = shared.mode.subscribe();
    let mut stalled = conn.stalled.subscribe();
    let rate = shared.rate.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Wait until neither the proxy nor this connection is stalled.
        loop {
            if *stalled.borrow() {
                // Stalled for good: hold the sockets open, forward nothing.
                std::future::pending::<()>().await;
            }
            if *mode.borrow_and_update() != Mode::Stall {
                break;
            }
            tokio::select! {
                _ = mode.changed() => {}
                _ = stalled.changed() => {}
            }
        }
        let limit = *rate.borrow();
        let chunk = if limit == 0 { buf.len() } else { buf.len().min((limit / 10).max(1) as usize) };
        let n = tokio::select! {
            r = from.read(&mut buf[..chunk]) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = mode.changed() => continue,
            _ = stalled.changed() => continue,
        };
        if limit > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / limit as f64)).await;
        }
        // A stall that began while reading holds these bytes back too.
        while *mode.borrow() == Mode::Stall || *stalled.borrow() {
            if *stalled.borrow() {
                std::future::pending::<()>().await;
            }
            let _ = mode.changed().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
