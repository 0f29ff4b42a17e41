//! `flotilla ctl`: the admin CLI, a thin client of the REST API.

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "FLOTILLA_API",
        default_value = "http://127.0.0.1:4321",
        global = true
    )]
    pub api: String,
    /// API token (Authorization: Bearer), when the API requires one.
    #[arg(long, env = "FLOTILLA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA that signed the API's certificate (https URLs with a private CA).
    #[arg(long, env = "FLOTILLA_API_CA", global = true)]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Fleet-wide counts: connected, healthy, silent, disconnected.
    Health,
    /// List or inspect agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Store, list and show configs.
    #[command(subcommand)]
    Configs(ConfigsCommand),
    /// Restart an agent (now over its WebSocket, or at its next poll).
    Restart { uid: String },
    /// Issue an agent a new client certificate and key, offered over OpAMP; its old certificate
    /// stops working once it has reconnected with the new one.
    RotateCertificate { uid: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    List {
        /// k=v,k2=v2 over the agents' attributes.
        #[arg(long)]
        selector: Option<String>,
        /// connected, disconnected or silent.
        #[arg(long)]
        status: Option<String>,
        /// healthy or unhealthy.
        #[arg(long)]
        health: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    Get {
        uid: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigsCommand {
    /// Stores a new version of config NAME from files; agents matching the selector get it.
    Put {
        name: String,
        /// A file to include (its base name becomes the file name in the config). Repeatable.
        #[arg(short, long = "file", required = true)]
        files: Vec<PathBuf>,
        /// k=v,k2=v2: which agents get the config (all agents when left out).
        #[arg(long)]
        selector: Option<String>,
    },
    List,
    Get {
        name: String,
    },
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let api = args.api.trim_end_matches('/').to_owned();
    let mut builder = reqwest::Client::builder();
    if let Some(token) = &args.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("--token must be printable text")?;
        value.set_sensitive(true);
        let headers =
            reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, value)]);
        builder = builder.default_headers(headers);
    }
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().context("cannot set up the HTTP client")?;
    let url = |path: &str| format!("{api}{path}");
    let out = match args.command {
        CtlCommand::Health => call(client.get(url("/api/v1/fleet/health"))).await?,
        CtlCommand::Agents(AgentsCommand::Get { uid }) => {
            call(client.get(url(&format!("/api/v1/agents/{uid}")))).await?
        }
        CtlCommand::Agents(AgentsCommand::List {
            selector,
            status,
            health,
            limit,
            json,
        }) => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(selector.map(|s| ("selector", s)));
            query.extend(status.map(|s| ("status", s)));
            query.extend(health.map(|s| ("health", s)));
            let page = call(client.get(url("/api/v1/agents")).query(&query)).await?;
            if !json {
                print_agent_table(&page);
                return Ok(());
            }
            page
        }
        CtlCommand::Configs(ConfigsCommand::List) => {
            call(client.get(url("/api/v1/configs"))).await?
        }
        CtlCommand::Configs(ConfigsCommand::Get { name }) => {
            call(client.get(url(&format!("/api/v1/configs/{name}")))).await?
        }
        CtlCommand::Configs(ConfigsCommand::Put {
            name,
            files,
            selector,
        }) => {
            let mut body_files = serde_json::Map::new();
            for path in files {
                let file_name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{} has no usable file name", path.display()))?
                    .to_owned();
                let body = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                body_files.insert(file_name, Value::String(body));
            }
            let mut sel = serde_json::Map::new();
            for pair in selector.iter().flat_map(|s| s.split(',')) {
                let Some((k, v)) = pair.split_once('=') else {
                    bail!("selector must be k=v pairs, got {pair:?}")
                };
                sel.insert(k.trim().into(), Value::String(v.trim().into()));
            }
            let body = json!({"selector": sel, "files": body_files});
            call(
                client
                    .put(url(&format!("/api/v1/configs/{name}")))
                    .json(&body),
            )
            .await?
        }
        CtlCommand::Restart { uid } => {
            call(client.post(url(&format!("/api/v1/agents/{uid}/restart")))).await?
        }
        CtlCommand::RotateCertificate { uid } => {
            call(client.post(url(&format!("/api/v1/agents/{uid}/certificate")))).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let resp = req
        .send()
        .await
        .context("cannot reach the Flotilla API (is `flotilla serve` running? see --api)")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no error message");
        bail!("API answered {status}: {msg}");
    }
    Ok(body)
}

fn print_agent_table(page: &Value) {
    println!(
        "{:<36}  {:<12}  {:<9}  {:<10}  {:<24}  SERVICE",
        "INSTANCE UID", "STATUS", "HEALTHY", "CONFIG", "LAST SEEN"
    );
    for a in page["agents"].as_array().into_iter().flatten() {
        let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "{:<36}  {:<12}  {:<9}  {:<10}  {:<24}  {}",
            s(&a["instance_uid"]),
            s(&a["status"]),
            a["healthy"].as_bool().map_or("-".into(), |h| h.to_string()),
            s(&a["remote_config_status"]["status"]),
            s(&a["last_seen"]),
            s(&a["identifying_attributes"]["service.name"]),
        );
    }
    println!(
        "{} of {} agents",
        page["agents"].as_array().map_or(0, Vec::len),
        page["total"]
    );
    if let Some(c) = page["next_cursor"].as_str() {
        println!("more: --cursor {c}");
    }
}
