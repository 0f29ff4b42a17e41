//! `flotilla certs`: a development PKI in one command (`init`), and certificate revocation
//! (`revoke`) against it. Production deployments bring their own CA; the files written here
//! have the same shape (PEM, ECDSA P-256).

use anyhow::{Context, bail};
use clap::Subcommand;
use flotilla_common::pki::{self, Ca};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a CA, a server certificate for localhost and 127.0.0.1, and client certificates for
    /// agents (each naming a new instance uid in a URI SAN urn:uuid:<uid>).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// How many client certificates to write.
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// More names for the server certificate (DNS names or IP addresses).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Lifetime of the server and client certificates.
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: Duration,
        /// Overwrite an existing PKI in --out.
        #[arg(long)]
        force: bool,
    },
    /// Add certificates to the CRL of a PKI written by `init` (DIR/crl.pem, for --crl).
    Revoke {
        /// The directory `init` wrote (ca.pem, ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// PEM certificates to revoke.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init {
            out,
            clients,
            server_names,
            validity,
            force,
        } => init(&out, clients, &server_names, validity, force),
        CertsCommand::Revoke { dir, certs } => revoke(&dir, &certs),
    }
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    println!("  wrote {}", path.display());
    Ok(())
}

fn init(
    out: &Path,
    clients: usize,
    extra_names: &[String],
    validity: Duration,
    force: bool,
) -> anyhow::Result<()> {
    if out.join("ca.pem").exists() && !force {
        bail!(
            "{} already holds a PKI (ca.pem); pass --force to replace it",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    println!("writing a development PKI to {}", out.display());
    let ca = Ca::generate("Flotilla development CA")?;
    write(&out.join("ca.pem"), ca.cert_pem(), false)?;
    write(&out.join("ca-key.pem"), ca.key_pem(), true)?;
    let mut names = vec!["localhost", "127.0.0.1"];
    names.extend(extra_names.iter().map(String::as_str));
    let server = ca.issue_server(&names, validity)?;
    write(&out.join("server.pem"), &server.cert_pem, false)?;
    write(
        &out.join("server-key.pem"),
        server.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    let mut index = String::from("# client certificate -> the agent instance uid it names\n");
    for i in 1..=clients {
        let uid = Uuid::now_v7();
        let client = ca.issue_client(uid, validity)?;
        let name = format!("client-{i}");
        write(&out.join(format!("{name}.pem")), &client.cert_pem, false)?;
        write(
            &out.join(format!("{name}-key.pem")),
            client.key_pem.as_deref().unwrap_or_default(),
            true,
        )?;
        index.push_str(&format!("{name}.pem {uid}\n"));
    }
    write(&out.join("clients.txt"), &index, false)?;
    // One certificate naming no agent, for the load tester's simulated agents to share.
    let swarm = ca.issue_shared_client("flotilla-swarm", validity)?;
    write(&out.join("swarm.pem"), &swarm.cert_pem, false)?;
    write(
        &out.join("swarm-key.pem"),
        swarm.key_pem.as_deref().unwrap_or_default(),
        true,
    )?;
    let d = out.display();
    println!(
        "\nrun Flotilla with mutual TLS:\n  flotilla serve --tls-cert {d}/server.pem --tls-key {d}/server-key.pem \
         --client-ca {d}/ca.pem --signing-ca-cert {d}/ca.pem --signing-ca-key {d}/ca-key.pem\n\
         and simulated agents that take the certificates it offers:\n  flotilla-swarm --url wss://localhost:4320/v1/opamp \
         --ca {d}/ca.pem --cert {d}/swarm.pem --key {d}/swarm-key.pem --accept-certificates"
    );
    Ok(())
}

fn revoke(dir: &Path, certs: &[PathBuf]) -> anyhow::Result<()> {
    let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca-key.pem"))?;
    let list = dir.join("revoked.txt");
    let mut serials: Vec<String> = match std::fs::read_to_string(&list) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    };
    for path in certs {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let der = pki::pem_certificate(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        let serial = pki::cert_serial(&der)
            .with_context(|| format!("{} has no readable serial number", path.display()))?;
        let hex = hex::encode(&serial);
        if !serials.contains(&hex) {
            println!("  revoking {} (serial {hex})", path.display());
            serials.push(hex);
        }
    }
    let bytes = serials
        .iter()
        .map(hex::decode)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} has a line that is not a hex serial", list.display()))?;
    let crl = ca.revocation_list(&bytes, Duration::from_secs(30 * 86_400))?;
    write(&list, &(serials.join("\n") + "\n"), false)?;
    write(&dir.join("crl.pem"), &crl, false)?;
    println!(
        "gateways started with --crl {}/crl.pem reload it within seconds",
        dir.display()
    );
    Ok(())
}
