use super::*;
use crate::telemetry::traces::OtlpProtocol;

#[test]
fn defaults_are_the_contract() {
    let c = ServeConfig::default();
    assert!(c.gateway && c.coordinator);
    assert_eq!(c.opamp_listen.to_string(), "0.0.0.0:4320");
    assert_eq!(c.api_listen.to_string(), "0.0.0.0:4321");
    assert_eq!(c.region, "local");
    assert_eq!(c.data_dir, PathBuf::from("flotilla-data"));
    assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
}

#[test]
fn flags_override_file_and_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, "region = \"eu1\"\nheartbeat-interval = \"10s\"\n").unwrap();
    let args = ServeArgs {
        config: Some(path),
        region: Some("us2".into()),
        ..Default::default()
    };
    let c = ServeConfig::load(args).unwrap();
    assert_eq!(c.region, "us2");
    assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
}

#[test]
fn unknown_file_keys_and_bad_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, "regoin = \"x\"\n").unwrap();
    let err = ServeConfig::load(ServeArgs {
        config: Some(path),
        ..Default::default()
    });
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("unknown field `regoin`")
    );

    let err = ServeConfig::load(ServeArgs {
        region: Some("a.b".into()),
        ..Default::default()
    });
    assert!(err.unwrap_err().to_string().contains("--region"));

    let gw_only = ServeArgs {
        roles: Some(vec![Role::Gateway]),
        ..Default::default()
    };
    let err = ServeConfig::load(gw_only).unwrap_err().to_string();
    assert!(err.contains("--roles gateway needs --nats-url"), "{err}");
    let coord_only = ServeArgs {
        roles: Some(vec![Role::Coordinator]),
        nats_url: Some("nats://n:4222".into()),
        ..Default::default()
    };
    let err = ServeConfig::load(coord_only).unwrap_err().to_string();
    assert!(err.contains("--roles coordinator needs both"), "{err}");
    let half = ServeArgs {
        redis_url: Some("redis://r:6379".into()),
        ..Default::default()
    };
    let err = ServeConfig::load(half).unwrap_err().to_string();
    assert!(err.contains("the clustered mode needs both"), "{err}");
    let gw_cluster = ServeArgs {
        roles: Some(vec![Role::Gateway]),
        nats_url: Some("nats://n:4222".into()),
        ..Default::default()
    };
    assert!(ServeConfig::load(gw_cluster).unwrap().clustered());

    let half_tls = ServeArgs {
        tls_cert: Some("c.pem".into()),
        ..Default::default()
    };
    assert!(
        ServeConfig::load(half_tls)
            .unwrap_err()
            .to_string()
            .contains("go together")
    );
}

#[test]
fn the_example_config_in_deploy_parses() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/flotilla.toml"
    ));
    let c = ServeConfig::load(ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.node_id, "flotilla-1");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/flotilla"));
    assert_eq!(
        c.limits.max_connection_age,
        Some(Duration::from_secs(24 * 3600))
    );
    assert_eq!(c.limits.message_rate, 10);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.alerts.grace, Duration::from_secs(60));
    assert_eq!(c.alerts.kinds.len(), 5);
}

#[test]
fn observability_settings_read_from_the_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        "otlp-endpoint = \"http://c:4317\"\notlp-protocol = \"grpc\"\ntrace-sample-ratio = 0.5\n\
         alert-webhook = [\"http://h/1\", \"http://h/2\"]\nalertmanager-url = [\"http://am:9093\"]\n\
         alert-interval = \"2s\"\n",
    )
    .unwrap();
    let c = ServeConfig::load(ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.trace.endpoint.as_deref(), Some("http://c:4317"));
    assert_eq!(c.trace.protocol, Some(OtlpProtocol::Grpc));
    assert_eq!(c.trace.sample_ratio, Some(0.5));
    assert_eq!(c.alerts.webhooks, ["http://h/1", "http://h/2"]);
    assert_eq!(c.alerts.alertmanagers, ["http://am:9093"]);
    assert_eq!(c.alerts.interval, Duration::from_secs(2));
    assert_eq!(c.alerts.grace, Duration::from_secs(60), "the default");
    let flags = ServeConfig::load(ServeArgs {
        config: Some(path),
        alert_webhooks: vec!["http://other".into()],
        trace_sample_ratio: Some(1.0),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        flags.alerts.webhooks,
        ["http://other"],
        "a list flag replaces the file's"
    );
    assert_eq!(flags.trace.sample_ratio, Some(1.0));
    let err = ServeConfig::load(ServeArgs {
        alert_interval: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--alert-interval"), "{err}");
}

#[test]
fn urls_are_redacted_in_the_logged_config() {
    assert_eq!(redact("redis://:hunter2@r:6379"), "redis://***@r:6379");
    assert_eq!(redact("nats://n:4222"), "nats://n:4222");
}

#[test]
fn security_flags_are_checked() {
    let tls = |ca: bool| ServeArgs {
        tls_cert: Some("c.pem".into()),
        tls_key: Some("k.pem".into()),
        client_ca: ca.then(|| "ca.pem".into()),
        ..Default::default()
    };
    assert_eq!(
        ServeConfig::load(tls(true)).unwrap().agent_identity,
        AgentIdentity::Registry
    );
    assert_eq!(
        ServeConfig::load(tls(false)).unwrap().agent_identity,
        AgentIdentity::None
    );
    let err = ServeConfig::load(ServeArgs {
        agent_identity: Some(AgentIdentity::UriSan),
        ..tls(false)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs client certificates"), "{err}");
    let err = ServeConfig::load(ServeArgs {
        crl: Some("crl.pem".into()),
        ..tls(false)
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs --client-ca"), "{err}");
    let err = ServeConfig::load(ServeArgs {
        signing_ca_cert: Some("ca.pem".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("go together"), "{err}");
    let err = ServeConfig::load(ServeArgs {
        opamp_advertise_url: Some("opamp.example:4320".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("must be a ws://, wss://"), "{err}");
    let err = ServeConfig::load(ServeArgs {
        opamp_advertise_url: Some("wss://opamp.example:4320/v1/opamp".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("need --signing-ca-cert"), "{err}");
    let c = ServeConfig::load(ServeArgs {
        opamp_advertise_url: Some("wss://opamp.example:4320/v1/opamp".into()),
        signing_ca_cert: Some("ca.pem".into()),
        signing_ca_key: Some("ca-key.pem".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        c.opamp_advertise_url.as_deref(),
        Some("wss://opamp.example:4320/v1/opamp")
    );
    let c = ServeConfig::load(ServeArgs {
        max_connection_age: Some(Duration::ZERO),
        tls_min_version: Some(TlsVersion::Tls12),
        ..tls(true)
    })
    .unwrap();
    assert_eq!(c.limits.max_connection_age, None);
    assert!(c.tls.unwrap().allow_tls12);
}

#[test]
fn security_settings_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        "tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\nclient-ca = \"ca.pem\"\n\
         tls-min-version = \"1.2\"\nagent-identity = \"uri-san\"\nmax-connection-age = \"0s\"\n",
    )
    .unwrap();
    let c = ServeConfig::load(ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.agent_identity, AgentIdentity::UriSan);
    assert!(c.tls.unwrap().allow_tls12);
    assert_eq!(c.limits.max_connection_age, None);
}

#[test]
fn the_default_connection_cap_leaves_room_under_the_open_file_limit() {
    let c = ServeConfig::load(ServeArgs::default()).unwrap();
    let files = super::open_file_limit().expect("readable on Linux");
    let cap = c.limits.max_connections as u64;
    assert!(cap < files, "cap {cap} >= open-file limit {files}");
    assert!(
        files - cap >= 256.min(files - 64),
        "room for the process's own files"
    );
}

#[test]
fn hardening_limits_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(
        &path,
        "agent-retention = \"7d\"\nmax-effective-config-size = 2048\nmax-health-components = 50\n\
         max-attributes = 20\nmax-agent-record-size = 65536\nmax-inflight-bytes = 33554432\n",
    )
    .unwrap();
    let c = ServeConfig::load(ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.agent_retention, Duration::from_secs(7 * 86_400));
    assert_eq!(
        c.record_limits,
        super::RecordLimits {
            max_effective_config_bytes: 2048,
            max_health_components: 50,
            max_attributes: 20,
            max_record_bytes: 65536,
        }
    );
    assert_eq!(c.limits.max_inflight_bytes, 32 << 20);
    for (args, why) in [
        (
            ServeArgs {
                heartbeat_interval: Some(Duration::from_secs(2 * 86_400)),
                ..Default::default()
            },
            "from 1s to 1day",
        ),
        (
            ServeArgs {
                max_inflight_bytes: Some(1024),
                ..Default::default()
            },
            "--max-inflight-bytes",
        ),
        (
            ServeArgs {
                max_agent_record_size: Some(10),
                ..Default::default()
            },
            "--max-agent-record-size",
        ),
    ] {
        let err = ServeConfig::load(args).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn the_api_body_limit_follows_the_message_size_unless_set() {
    let c = ServeConfig::default();
    assert_eq!(c.api_max_body, 8 << 20);
    let big = ServeConfig::load(ServeArgs {
        max_message_size: Some(64 << 20),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(big.api_max_body, 128 << 20);
    let err = ServeConfig::load(ServeArgs {
        api_max_body: Some(1 << 20),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--api-max-body"), "{err}");
}

#[test]
fn toml_keys_are_the_flags_without_dashes() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["redact-pattern", "redact-patterns"] {
        let path = dir.path().join(format!("{key}.toml"));
        std::fs::write(
            &path,
            format!("{key} = [\"(?i)pin\"]\napi-max-body = 9000000\n"),
        )
        .unwrap();
        let c = ServeConfig::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.api_max_body, 9_000_000, "{key}");
        assert_eq!(c.redact_patterns, ["(?i)pin"], "{key}");
    }
}

#[test]
fn nats_and_redis_security_settings_are_read_and_paired() {
    let c = ServeConfig::load(ServeArgs {
        nats_url: Some("tls://n:4222".into()),
        nats_ca: Some("ca.pem".into()),
        nats_cert: Some("c.pem".into()),
        nats_key: Some("k.pem".into()),
        nats_creds: Some("f.creds".into()),
        roles: Some(vec![Role::Gateway]),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.nats_security.ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(
        c.nats_security.client,
        Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
    );
    assert_eq!(c.nats_security.creds, Some(PathBuf::from("f.creds")));
    for (args, says) in [
        (
            ServeArgs {
                nats_cert: Some("c.pem".into()),
                ..Default::default()
            },
            "--nats-cert and --nats-key go together",
        ),
        (
            ServeArgs {
                redis_key: Some("k.pem".into()),
                ..Default::default()
            },
            "--redis-cert and --redis-key go together",
        ),
    ] {
        let err = ServeConfig::load(args).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
    let c = ServeConfig::load(ServeArgs {
        redis_ca: Some("ca.pem".into()),
        redis_cert: Some("c.pem".into()),
        redis_key: Some("k.pem".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.redis_tls.ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(
        c.redis_tls.client,
        Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
    );
}

#[test]
fn own_metrics_settings_are_checked() {
    let load = |url: Option<&str>, forward: &[&str]| {
        ServeConfig::load(ServeArgs {
            agent_metrics_url: url.map(str::to_owned),
            agent_metrics_forward: forward.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    };
    let c = load(None, &["backend=https://otlp.example/v1/metrics?a=1,2"]).unwrap();
    assert_eq!(c.agent_metrics, AgentMetricsOffer::Gateway);
    assert_eq!(
        c.agent_metrics_forward["backend"],
        "https://otlp.example/v1/metrics?a=1,2"
    );
    assert_eq!(
        load(Some("none"), &[]).unwrap().agent_metrics,
        AgentMetricsOffer::Off
    );
    let url = "https://gw.example:4320/v1/metrics";
    assert_eq!(
        load(Some(url), &[]).unwrap().agent_metrics,
        AgentMetricsOffer::Url(url.into())
    );
    for (url, forward, says) in [
        (
            Some("gw.example/v1/metrics"),
            &[][..],
            "--agent-metrics-url",
        ),
        (
            None,
            &["https://otlp.example/v1/metrics"][..],
            "must be NAME=URL",
        ),
        (None, &["a b=https://x/v1/metrics"][..], "must be NAME=URL"),
        (None, &["b=ftp://x"][..], "must be NAME=URL"),
        (None, &["b=http://x", "b=http://y"][..], "twice"),
    ] {
        let err = load(url, forward).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn regions_of_the_fleet() {
    let load = |region: &str, regions: &[&str], endpoints: &[&str]| {
        ServeConfig::load(ServeArgs {
            region: Some(region.into()),
            regions: regions.iter().map(|s| s.to_string()).collect(),
            region_endpoint: endpoints.iter().map(|s| s.to_string()).collect(),
            nats_url: Some("nats://127.0.0.1:4222".into()),
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..Default::default()
        })
    };
    let c = load("eu", &[], &[]).unwrap();
    assert!(c.regions.peers("eu").is_empty());
    assert_eq!(c.regions.home_attribute, "cloud.region");
    assert_eq!(c.regions.timeout, DEFAULT_REGION_TIMEOUT);
    let c = load(
        "eu",
        &["us", "eu", "ap", "us"],
        &["us=wss://us.example:4320/v1/opamp"],
    )
    .unwrap();
    assert_eq!(c.regions.peers("eu"), ["ap", "us"]);
    assert_eq!(c.regions.endpoints["us"], "wss://us.example:4320/v1/opamp");
    for (regions, endpoints, says) in [
        (
            &["us", "ap"][..],
            &[][..],
            "must include this process's --region",
        ),
        (&["eu", "u s"][..], &[][..], "--regions names \"u s\""),
        (&["eu"][..], &["us"][..], "must be REGION=URL"),
        (&["eu"][..], &["us=ftp://x"][..], "must be REGION=URL"),
        (&["eu"][..], &["us=ws://a", "us=ws://b"][..], "twice"),
    ] {
        let err = load("eu", regions, endpoints).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    let embedded = ServeConfig::load(ServeArgs {
        region: Some("eu".into()),
        regions: vec!["eu".into(), "us".into()],
        ..Default::default()
    });
    assert!(
        embedded
            .unwrap_err()
            .to_string()
            .contains("--nats-url is needed")
    );
}
