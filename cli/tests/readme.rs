//! README.md's Quickstart, run as written: its shell blocks are read from README.md itself (so
//! the doc cannot drift from the code) and run by bash against a real `flotilla serve`, then the
//! agents must report the pushed config APPLIED.
//!
//! What the test changes, and only that: the ports (free ones instead of 4320/4321, so parallel
//! tests and a running Flotilla do not clash), the build (a debug build of the two binaries in
//! the workspace's target directory instead of `--release`, which the test command has already
//! compiled), and the working directory (a temporary one holding `examples/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// The ```sh blocks of the README section whose heading starts with `heading`.
fn shell_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).expect("the Quickstart heading");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        rest = &rest[i + 6..];
        let end = rest.find("```").expect("a closed block");
        blocks.push(rest[..end].to_owned());
        rest = &rest[end + 3..];
    }
    blocks
}

#[test]
fn the_readme_quickstart_runs_as_written_and_agents_apply_the_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = shell_blocks(&readme, "## Quickstart");
    assert!(blocks.len() >= 3, "{blocks:?}");
    let script = blocks.join("\n");
    for needed in [
        "flotilla-swarm --url ws://127.0.0.1:4320",
        "flotilla ctl configs apply prod-base -f examples/collector.yaml",
        "--selector deployment.environment=prod",
    ] {
        assert!(
            script.contains(needed),
            "the Quickstart lost {needed:?}:\n{script}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    let (opamp, api) = (flotilla_testkit::free_port(), flotilla_testkit::free_port());
    let mut server = Command::new(BIN)
        .args(["serve", "--opamp-listen", &format!("127.0.0.1:{opamp}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .arg("--data-dir")
        .arg(dir.path().join("flotilla-data"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(flotilla_testkit::wait_for_port(
        api,
        Duration::from_secs(20)
    ));

    // The binaries: flotilla is this test's; flotilla-swarm is beside it (`cargo test
    // --workspace` builds it for the load tester's own tests), else built here.
    let bin_dir: PathBuf = Path::new(BIN).parent().unwrap().to_owned();
    let build = format!(
        "test -x {0}/flotilla-swarm || cargo build --quiet --bin flotilla-swarm --manifest-path \"$FLOTILLA_ROOT/Cargo.toml\"",
        bin_dir.display()
    );
    let script = script
        .replace(
            "cargo build --release --bin flotilla --bin flotilla-swarm",
            &build,
        )
        .replace("$PWD/target/release", &bin_dir.display().to_string())
        .replace("127.0.0.1:4320", &format!("127.0.0.1:{opamp}"))
        .replace("127.0.0.1:4321", &format!("127.0.0.1:{api}"));
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("FLOTILLA_API", format!("http://127.0.0.1:{api}"))
        .env("FLOTILLA_ROOT", &root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();

    // Every agent reports the pushed config APPLIED.
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let out = Command::new(BIN)
            .args(["ctl", "--api", &format!("http://127.0.0.1:{api}")])
            .args(["agents", "list", "--config", "applied", "-o", "json"])
            .output()
            .unwrap();
        let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if page["total"] == 5 || Instant::now() > deadline {
            break page["total"].clone();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = Command::new("pkill")
        .args([
            "-f",
            &format!("flotilla-swarm --url ws://127.0.0.1:{opamp}"),
        ])
        .status();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        run.status.success(),
        "the Quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("5 of 5 agents"), "{stdout}");
    assert!(stdout.contains("config prod-base version 1"), "{stdout}");
    assert!(stdout.contains("\"total\":5"), "the curl check: {stdout}");
    assert_eq!(applied, 5, "agents report APPLIED:\n{stdout}\n{stderr}");
}
