//! The layout of a run on timely: one process with its workers, or a cluster of processes named
//! by a host file.
use std::path::Path;

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

/// The timely configuration of `workers` threads in process `process` of `processes`.
pub fn timely_config(workers: usize, processes: usize, process: usize, hostfile: Option<&Path>) -> Result<timely::Config, Error> {
    if workers < 1 {
        return Err(Error::invalid("--workers must be at least 1"));
    }
    if processes <= 1 {
        return Ok(timely::Config::process(workers));
    }
    if process >= processes {
        return Err(Error::invalid(format!("--process {process} must be below --processes {processes}")));
    }
    let hostfile = hostfile.ok_or_else(|| Error::invalid("--processes > 1 needs --hostfile (one host:port per process)"))?;
    let addresses = read_hostfile(hostfile, processes)?;
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster { threads: workers, process, addresses, report: false, zerocopy: false },
        worker: timely::WorkerConfig::default(),
    })
}
