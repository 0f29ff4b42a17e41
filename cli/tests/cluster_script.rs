//! `REGIONS="eu us" scripts/cluster.sh`: two cells on loopback, each its own nats-server,
//! redis-server, 3 coordinators and 2 gateways, the nats-servers joined by NATS gateway
//! connections; the summary names every process with its region, either region's API answers
//! for both, and `stop` leaves nothing running.

use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const REGIONS: [&str; 2] = ["eu", "us"];
const COORDINATORS: [&str; 3] = ["c1", "c2", "c3"];
const GATEWAYS: [&str; 2] = ["g1", "g2"];

/// A first port such that it and the 250 after it are free (below Linux's ephemeral range, so
/// other tests' `free_port`s do not land in it).
fn free_base() -> u16 {
    for _ in 0..20 {
        let base: u16 = rand::random_range(200..320) * 100;
        let held: Result<Vec<TcpListener>, _> = (base..=base + 250)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no 251 free loopback ports in a row found");
}

/// The script run with one environment; its `Drop` stops whatever it started.
struct Script {
    dir: tempfile::TempDir,
    base: u16,
}

impl Script {
    fn run(&self, command: &str) -> Output {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Command::new("scripts/cluster.sh")
            .arg(command)
            .current_dir(repo)
            .env("REGIONS", REGIONS.join(" "))
            .env("CLUSTER_DIR", self.dir.path())
            .env("CLUSTER_BASE_PORT", self.base.to_string())
            .env("FLOTILLA_BIN", env!("CARGO_BIN_EXE_flotilla"))
            .env_remove("REGION")
            .env_remove("GATEWAY_FLAGS")
            .output()
            .expect("run scripts/cluster.sh")
    }

    /// Runs `command`, asserts it succeeded, returns its stdout.
    fn ok(&self, command: &str) -> String {
        let out = self.run(command);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cluster.sh {command}: {}\n{stdout}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        stdout
    }

    /// The first port of region `i`'s cell.
    fn first(&self, i: usize) -> u16 {
        self.base + 100 * i as u16
    }

    /// Every port the fleet listens on.
    fn ports(&self) -> Vec<u16> {
        (0..REGIONS.len())
            .flat_map(|i| {
                let p = self.first(i);
                [0, 1, 2, 10, 11, 12, 20, 21, 30, 31].map(|o| p + o)
            })
            .collect()
    }

    /// The end of every process's log.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = REGIONS
            .iter()
            .filter_map(|r| std::fs::read_dir(self.dir.path().join(r)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("=== {}\n{tail}\n", f.display())
            })
            .collect()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.run("stop");
    }
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

#[tokio::test]
async fn two_regions_start_answer_as_one_fleet_and_stop() {
    flotilla_testkit::require("nats-server");
    flotilla_testkit::require("redis-server");
    let script = Script {
        dir: tempfile::tempdir().unwrap(),
        base: free_base(),
    };

    let summary = script.ok("start");
    eprintln!("{summary}");
    // One line per process, naming its region first, then its role and where it listens.
    let line = |region: &str, role: &[&str]| -> &str {
        let found: Vec<&str> = summary
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.first() == Some(&region) && words[1..].starts_with(role)
            })
            .collect();
        assert_eq!(found.len(), 1, "{region} {role:?} in\n{summary}");
        found[0]
    };
    for (i, region) in REGIONS.iter().enumerate() {
        let first = script.first(i);
        let nats = line(region, &["nats-server"]);
        assert!(
            nats.contains(&format!("nats://127.0.0.1:{first}"))
                && nats.contains(&format!("gateway nats://127.0.0.1:{}", first + 2)),
            "{nats}"
        );
        let redis = line(region, &["redis-server"]);
        assert!(
            redis.contains(&format!("redis://127.0.0.1:{}", first + 1)),
            "{redis}"
        );
        for (n, c) in COORDINATORS.iter().enumerate() {
            let l = line(region, &["coordinator", c]);
            let api = format!("API http://127.0.0.1:{}", first + 10 + n as u16);
            assert!(l.contains(&api), "{l}");
        }
        for (n, g) in GATEWAYS.iter().enumerate() {
            let l = line(region, &["gateway", g]);
            let opamp = format!("OpAMP ws://127.0.0.1:{}/v1/opamp", first + 20 + n as u16);
            let ops = format!("ops http://127.0.0.1:{}", first + 30 + n as u16);
            assert!(l.contains(&opamp) && l.contains(&ops), "{l}");
        }
        let lines = summary
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(region))
            .count();
        assert_eq!(lines, 2 + COORDINATORS.len() + GATEWAYS.len(), "{summary}");
    }

    // Once the NATS gateways join the regions, eu's API answers for both.
    let url = format!(
        "http://127.0.0.1:{}/api/v1/fleet/health",
        script.first(0) + 10
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let health: Option<Value> = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let whole = health.as_ref().is_some_and(|h| {
            h["partial"] == false && REGIONS.iter().all(|r| h["regions"].get(r).is_some())
        });
        if whole {
            eprintln!(
                "one fleet after {:?}: {}",
                started.elapsed(),
                health.unwrap()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no whole fleet view within 30 s: {health:?}\n{}",
            script.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // stop stops every process of every region; status says so and nothing listens any more.
    let stopped = script.ok("stop");
    for region in REGIONS {
        for p in ["nats", "redis"]
            .iter()
            .chain(&COORDINATORS)
            .chain(&GATEWAYS)
        {
            let name = format!("stopped {region}-{p}");
            assert!(stopped.lines().any(|l| l == name), "{name} in\n{stopped}");
        }
    }
    let status = script.ok("status");
    assert_eq!(status.lines().count(), 14, "{status}");
    assert!(status.lines().all(|l| l.ends_with(": stopped")), "{status}");
    let open: Vec<u16> = script
        .ports()
        .into_iter()
        .filter(|p| listening(*p))
        .collect();
    assert!(open.is_empty(), "still listening on {open:?}");
}
