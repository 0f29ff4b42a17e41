//! The Python agent of cli/tests/interop/own_metrics_agent.py (the OpAMP client and the
//! OpenTelemetry SDK's OTLP/HTTP metric exporter), for the tests of agents' own metrics.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use uuid::Uuid;

/// The Python with the OpAMP client and the OpenTelemetry SDK, or None when told to skip.
pub fn python() -> Option<String> {
    match std::env::var("FLOTILLA_INTEROP_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if std::env::var("FLOTILLA_SKIP_INTEROP").is_ok_and(|v| v == "1") => {
            eprintln!("SDK test skipped (FLOTILLA_SKIP_INTEROP=1)");
            None
        }
        Err(_) => panic!(
            "set FLOTILLA_INTEROP_PYTHON to a python with opentelemetry-opamp-client and \
             opentelemetry-sdk (see scripts/test.sh), or FLOTILLA_SKIP_INTEROP=1"
        ),
    }
}

/// A Python agent (cli/tests/interop/own_metrics_agent.py), killed when dropped.
pub struct PyAgent {
    child: Child,
    pub uid: Uuid,
    pub metrics_endpoint: String,
}

impl PyAgent {
    /// Starts it against `opamp_url` (plain HTTP) with `args` (`--attr k=v`, `--failing`), once it
    /// printed its instance uid and where it was offered to send its metrics.
    pub fn spawn(python: &str, opamp_url: &str, args: &[&str]) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/own_metrics_agent.py"
        );
        let mut child = Command::new(python)
            .args([script, "--endpoint", opamp_url, "--duration", "120"])
            .args(["--export-interval", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the agent's first line {line:?}: {e}"));
        Self {
            child,
            uid: v["instance_uid"].as_str().unwrap().parse().unwrap(),
            metrics_endpoint: v["metrics_endpoint"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for PyAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
