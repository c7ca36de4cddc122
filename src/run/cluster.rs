//! The layout of a run on timely: one process with its workers, or a cluster of processes named
//! by a host file.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::dataflow::Communication;
use crate::error::Error;

/// The addresses of a host file: one `host:port` per line (blank lines and `#` comments
/// skipped), each resolving, none a wildcard address. Timely listens on exactly this
/// process's line (each whitespace-separated address of it), so a line holding several
/// addresses or `0.0.0.0`/`[::]` would open the unauthenticated transport on interfaces the
/// user did not list: both are refused.
pub fn read_hostfile(hostfile: &Path, processes: usize) -> Result<Vec<String>, Error> {
    use std::net::ToSocketAddrs;
    let text = std::fs::read_to_string(hostfile).map_err(|e| Error::io("cannot read host file", hostfile, e))?;
    let addresses: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect();
    let file = hostfile.display();
    if addresses.len() != processes {
        return Err(Error::invalid(format!("host file {file} lists {} addresses for {processes} processes", addresses.len())));
    }
    for (i, a) in addresses.iter().enumerate() {
        if a.contains(char::is_whitespace) {
            return Err(Error::invalid(format!("host file {file}: the line of process {i} (`{a}`) must hold one host:port")));
        }
        let resolved: Vec<std::net::SocketAddr> = a
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("host file {file}: `{a}` (process {i}) is not a reachable host:port: {e}")))?
            .collect();
        if resolved.is_empty() {
            return Err(Error::invalid(format!("host file {file}: `{a}` (process {i}) resolves to no address")));
        }
        if resolved.iter().any(|s| s.ip().is_unspecified()) {
            return Err(Error::invalid(format!(
                "host file {file}: `{a}` (process {i}) is a wildcard address, which would listen on every network interface; \
                 list the host's address on the private network instead"
            )));
        }
    }
    Ok(addresses)
}

/// The worker layout of a run, checked before anything is read: one process, or a cluster whose
/// peers are connected by [`Layout::connect`] when the graph starts.
#[derive(Debug, Clone)]
pub enum Layout {
    /// Threads in this process only.
    Process {
        /// Worker threads.
        workers: usize,
    },
    /// Threads in each process of a cluster.
    Cluster {
        /// Worker threads per process.
        workers: usize,
        /// This process's index.
        process: usize,
        /// Every process's `host:port`, in process order (the host file).
        addresses: Vec<String>,
    },
}

/// The layout of `workers` threads in process `process` of `processes`.
pub fn layout(workers: usize, processes: usize, process: usize, hostfile: Option<&Path>) -> Result<Layout, Error> {
    if workers < 1 {
        return Err(Error::invalid("--workers must be at least 1"));
    }
    if processes <= 1 {
        return Ok(Layout::Process { workers });
    }
    if process >= processes {
        return Err(Error::invalid(format!("--process {process} must be below --processes {processes}")));
    }
    let hostfile = hostfile.ok_or_else(|| Error::invalid("--processes > 1 needs --hostfile (one host:port per process)"))?;
    Ok(Layout::Cluster { workers, process, addresses: read_hostfile(hostfile, processes)? })
}

impl Layout {
    /// The communication of the workers: for a cluster, a TCP connection with every other
    /// process, made within `timeout`. Timely's own start-up waits for missing peers forever,
    /// so this one does the same handshake (each process connects to the processes listed
    /// before it and sends its index, as a big-endian u64; it accepts the ones listed after it)
    /// with a deadline, and then hands the connected sockets to timely. A peer that has not
    /// connected by then is named in the error (exit code 2), so a nightly cluster run whose
    /// peer never started ends instead of hanging.
    pub fn connect(&self, timeout: Duration) -> Result<Communication, Error> {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::ProcessBuilder;
        use timely::communication::{AllocatorBuilder, Hooks};
        let (workers, process, addresses) = match self {
            Layout::Process { workers } => {
                let (builders, guard) = timely::CommunicationConfig::Process(*workers).try_build().map_err(Error::invalid)?;
                return Ok(Communication { builders, guard, process: None });
            }
            Layout::Cluster { workers, process, addresses } => (*workers, *process, addresses),
        };
        let sockets = handshake(addresses, process, timeout)?;
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) = initialize_networking_from_sockets(local, sockets, process, workers, hooks)
            .map_err(|e| Error::io_message("cannot start the cluster's network threads".to_string(), e))?;
        Ok(Communication {
            builders: builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            guard: Box::new(guard),
            process: Some(process),
        })
    }
}

/// A socket to every other process of the cluster (`None` at `process`), or an error naming the
/// processes that did not connect within `timeout`.
fn handshake(addresses: &[String], process: usize, timeout: Duration) -> Result<Vec<Option<TcpStream>>, Error> {
    let deadline = Instant::now() + timeout;
    let listener = TcpListener::bind(&addresses[process])
        .map_err(|e| Error::io_message(format!("cannot listen on {} (process {process})", addresses[process]), e))?;
    listener.set_nonblocking(true).map_err(|e| Error::io_message("cannot set up the cluster listener".to_string(), e))?;
    let peers = addresses.len();
    let (earlier, later) = std::thread::scope(|s| {
        let earlier = s.spawn(|| (0..process).map(|i| dial(&addresses[i], process, deadline)).collect::<Vec<_>>());
        let later = accept(&listener, process, peers, deadline);
        (earlier.join().unwrap_or_default(), later)
    });
    let mut sockets: Vec<Option<TcpStream>> = earlier;
    sockets.resize_with(process, || None);
    sockets.push(None);
    sockets.extend(later);
    let missing: Vec<String> =
        (0..peers).filter(|&i| i != process && sockets[i].is_none()).map(|i| format!("process {i} ({})", addresses[i])).collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "cluster start-up: no connection with {} within {} s (--connect-timeout); start every process of the run, \
             each with the same host file and its own --process",
            missing.join(", "),
            timeout.as_secs_f64()
        )));
    }
    Ok(sockets)
}

/// Connects to the process listening at `address` and sends it this process's index; retries
/// until `deadline`.
fn dial(address: &str, me: usize, deadline: Instant) -> Option<TcpStream> {
    use std::net::ToSocketAddrs;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let target = address.to_socket_addrs().ok().and_then(|mut a| a.next());
        if let Some(target) = target {
            if let Ok(mut stream) = TcpStream::connect_timeout(&target, left.max(Duration::from_millis(10))) {
                if stream.set_nodelay(true).is_ok() && stream.write_all(&(me as u64).to_be_bytes()).is_ok() {
                    return Some(stream);
                }
            }
        }
        std::thread::sleep(RETRY.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// Accepts the processes after `me` until all have connected or `deadline` passes: each sends its
/// index first. A connection that does not (a port scan, a stray client) is dropped, not fatal.
fn accept(listener: &TcpListener, me: usize, peers: usize, deadline: Instant) -> Vec<Option<TcpStream>> {
    let mut later: Vec<Option<TcpStream>> = (me + 1..peers).map(|_| None).collect();
    while later.iter().any(Option::is_none) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        match listener.accept() {
            Ok((mut stream, _)) => {
                let mut index = [0u8; 8];
                let ok = stream.set_nonblocking(false).is_ok()
                    && stream.set_read_timeout(Some(left.clamp(Duration::from_millis(10), Duration::from_secs(10)))).is_ok()
                    && stream.read_exact(&mut index).is_ok()
                    && stream.set_read_timeout(None).is_ok()
                    && stream.set_nodelay(true).is_ok();
                let from = u64::from_be_bytes(index) as usize;
                if ok && from > me && from < peers && later[from - me - 1].is_none() {
                    later[from - me - 1] = Some(stream);
                } else {
                    tracing::warn!("cluster start-up: dropped a connection that is not a peer of this run");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL.min(left)),
            Err(e) => {
                tracing::warn!("cluster start-up: accepting a connection failed: {e}");
                std::thread::sleep(POLL.min(left));
            }
        }
    }
    later
}

/// How often a missing peer is dialled again.
const RETRY: Duration = Duration::from_millis(250);
/// How often the listener is polled.
const POLL: Duration = Duration::from_millis(20);
