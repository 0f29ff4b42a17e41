//! Real server processes for tests: `nats-server`, `redis-server` and anything else started as a
//! child process on free loopback ports, with the faults tests inject (kill -9, SIGSTOP/SIGCONT,
//! restart on the same port). Every process is killed when its handle drops, so a failed test
//! leaves nothing running. Logs go to files in the test's directory; [`Proc::log_tail`] shows them.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago, and not handed out before by this process: the
/// system may give the same free port to two binds in a row (a server given it twice, for its
/// OpAMP and API listeners, answered API requests from its OpAMP listener).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The sum of the samples in a Prometheus text exposition whose lines start with `series` (a
/// metric name, or a name and the start of its labels: `name{reason="x"`).
pub fn metric_sum(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Panics with a clear message when `program` is not installed (scripts/test.sh installs it).
pub fn require(program: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is not installed; run scripts/test.sh, which installs it"
    );
}

/// A child process that can be killed, paused, resumed and restarted with the same arguments.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        program: impl AsRef<Path>,
        args: &[String],
        envs: &[(String, String)],
        log: PathBuf,
    ) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            program: program.as_ref().to_owned(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log,
            child: None,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", self.name);
    }

    /// kill -9, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process keeps its sockets but runs nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns its exit code (None: killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("-TERM");
        let mut child = self.child.take()?;
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Starts the process again with the same arguments (after [`Proc::kill`] or a terminate).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// The last `lines` lines of the process's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            all[start..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` on a free loopback port.
pub struct NatsServer {
    pub port: u16,
    pub proc: Proc,
}

impl NatsServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_with_config(dir, "")
    }

    /// A server with `config` (nats-server configuration syntax, e.g. `max_payload: 65536`).
    pub fn start_with_config(dir: &Path, config: &str) -> Self {
        require("nats-server");
        let port = free_port();
        let mut args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        if !config.is_empty() {
            let file = dir.join("nats.conf");
            std::fs::write(&file, config).expect("nats config file");
            args.extend(["-c".into(), file.display().to_string()]);
        }
        let proc = Proc::spawn(
            "nats-server",
            "nats-server",
            &args,
            &[],
            dir.join("nats.log"),
        );
        let s = Self { port, proc };
        s.wait_ready();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn wait_ready(&self) {
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not start\n{}",
            self.proc.log_tail(20)
        );
    }

    /// Stops the server (kill -9) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.proc.restart();
        self.wait_ready();
    }
}

/// A `redis-server` on a free loopback port, persisting with an append-only file under its
/// directory, so a restart keeps its data (as a production Redis must).
pub struct RedisServer {
    pub port: u16,
    pub proc: Proc,
}

impl RedisServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A server with `extra` arguments (e.g. TLS: `--port 0 --tls-port P ...`); with a
    /// `--tls-port`, that is the port waited on and kept in `port`.
    pub fn start_with(dir: &Path, extra: &[String]) -> Self {
        require("redis-server");
        let mut port = free_port();
        let data = dir.join("redis-data");
        std::fs::create_dir_all(&data).expect("redis data dir");
        let args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dir",
            data.to_str().expect("utf-8 path"),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect();
        if let Some(p) = extra
            .windows(2)
            .filter(|w| w[0] == "--tls-port")
            .find_map(|w| w[1].parse().ok())
        {
            port = p;
        }
        let proc = Proc::spawn(
            "redis-server",
            "redis-server",
            &args,
            &[],
            dir.join("redis.log"),
        );
        let s = Self { port, proc };
        s.wait_ready();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn wait_ready(&self) {
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "redis-server did not start\n{}",
            self.proc.log_tail(20)
        );
    }

    /// Stops the server with SIGTERM (it writes its append-only file) and starts it again on the
    /// same port with the same data.
    pub fn restart(&mut self) {
        self.proc.terminate(Duration::from_secs(10));
        self.proc.restart();
        self.wait_ready();
    }
}

/// A `redis-sentinel` on a free loopback port, watching the primary on `127.0.0.1:primary`
/// under the name `master` (quorum 2, down after one second: quick failovers for tests). With a
/// `password`, it is the primary's and replicas' and this Sentinel's own (as its peers').
pub struct RedisSentinel {
    pub port: u16,
    pub proc: Proc,
}

impl RedisSentinel {
    pub fn start(dir: &Path, master: &str, primary: u16, password: Option<&str>) -> Self {
        require("redis-sentinel");
        let port = free_port();
        std::fs::create_dir_all(dir).expect("sentinel dir");
        // Sentinel rewrites its configuration file as it learns the topology.
        let conf = dir.join("sentinel.conf");
        let auth = password.map_or(String::new(), |p| {
            format!(
                "requirepass {p}\nsentinel sentinel-pass {p}\nsentinel auth-pass {master} {p}\n"
            )
        });
        std::fs::write(
            &conf,
            auth + &format!(
                "bind 127.0.0.1\nport {port}\ndir {dir}\n\
                 sentinel monitor {master} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir = dir.display()
            ),
        )
        .expect("sentinel config");
        let proc = Proc::spawn(
            "redis-sentinel",
            "redis-sentinel",
            &[conf.display().to_string()],
            &[],
            dir.join("sentinel.log"),
        );
        assert!(
            wait_for_port(port, Duration::from_secs(10)),
            "redis-sentinel did not start\n{}",
            proc.log_tail(20)
        );
        Self { port, proc }
    }

    /// `host:port` of this Sentinel, for a `redis+sentinel://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A TCP forwarder on a free loopback port to `127.0.0.1:upstream`, that can cut every connection
/// through it (and refuse new ones) to partition one process from a server, then heal.
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                for (from, to) in pipes {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
                s.open.lock().expect("proxy lock").extend([client, server]);
            }
        });
        Self { port, state }
    }

    /// Drops every connection through the proxy and refuses new ones until [`TcpProxy::heal`].
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.state.open.lock().expect("proxy lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
