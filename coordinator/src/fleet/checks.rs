//! What an admin may store: config and label names, and the packages and connection settings a
//! config offers. Each check names what is wrong, for a 400 before anything is stored.

use base64::Engine;
use flotilla_common::config::{MAX_HEARTBEAT, MIN_HEARTBEAT};
use flotilla_common::store::{AgentSettings, PackageOffer};
use std::collections::BTreeMap;

/// Names allowed for configs: they appear in URLs and CLI arguments, so `.` and `..` (which
/// URLs resolve away) are not names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Label keys follow the selector grammar's key rules, so every label can be selected on.
pub fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Checks the packages of a config: what a PackagesAvailable offer would otherwise drop silently.
pub fn check_packages(packages: &BTreeMap<String, PackageOffer>) -> Result<(), String> {
    for (name, p) in packages {
        if name.is_empty() {
            return Err("package names must not be empty".into());
        }
        if !matches!(p.kind.as_str(), "top_level" | "addon") {
            return Err(format!(
                "package {name:?}: type must be \"top_level\" or \"addon\", not {:?}",
                p.kind
            ));
        }
        if p.version.is_empty() || p.download_url.is_empty() {
            return Err(format!(
                "package {name:?} needs a version and a download_url"
            ));
        }
        if hex::decode(&p.content_hash).is_err() {
            return Err(format!(
                "package {name:?}: content_hash must be hex (SHA-256 of the file)"
            ));
        }
        if base64::engine::general_purpose::STANDARD
            .decode(&p.signature)
            .is_err()
        {
            return Err(format!("package {name:?}: signature must be base64"));
        }
    }
    Ok(())
}

/// Checks the connection settings of a config: a heartbeat interval agents can use (whole
/// seconds, within the server's range) and own-telemetry destinations that are URLs.
pub fn check_settings(settings: &AgentSettings) -> Result<(), String> {
    if let Some(h) = settings.heartbeat_interval
        && (!(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&h) || h.subsec_nanos() != 0)
    {
        return Err(format!(
            "settings.heartbeat_interval must be a whole number of seconds from {} to {} \
             (agents are offered it in seconds), not {}",
            humantime::format_duration(MIN_HEARTBEAT),
            humantime::format_duration(MAX_HEARTBEAT),
            humantime::format_duration(h)
        ));
    }
    if let Some(name) = &settings.own_metrics_forward {
        if settings.own_metrics.is_some() {
            return Err(
                "settings.own_metrics_forward and settings.own_metrics exclude each other: the \
                 first keeps the metrics in Flotilla and forwards a copy, the second sends them \
                 elsewhere only"
                    .into(),
            );
        }
        if !flotilla_common::names::is_forward_name(name) {
            return Err(format!(
                "settings.own_metrics_forward must name a gateway --agent-metrics-forward \
                 destination (1 to 64 letters, digits, '-' or '_'), not {name:?}"
            ));
        }
    }
    for (name, d) in [
        ("own_metrics", &settings.own_metrics),
        ("own_traces", &settings.own_traces),
        ("own_logs", &settings.own_logs),
    ] {
        let Some(d) = d else { continue };
        let url = d.destination_endpoint.as_str();
        let http_url = url.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !http_url {
            return Err(format!(
                "settings.{name}.destination_endpoint must be an http:// or https:// URL, not {url:?}"
            ));
        }
        if let Some(k) = d.headers.iter().find_map(|(k, v)| {
            let valid = http::HeaderName::from_bytes(k.as_bytes()).is_ok()
                && http::HeaderValue::from_bytes(v.as_bytes()).is_ok();
            (!valid).then_some(k)
        }) {
            return Err(format!(
                "settings.{name}.headers: header {k:?} must have a valid HTTP name and no control characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_common::store::TelemetryDestination;
    use std::time::Duration;

    fn pkg() -> PackageOffer {
        PackageOffer {
            kind: "top_level".into(),
            version: "1.0".into(),
            download_url: "https://example.com/otelcol.tar.gz".into(),
            content_hash: "ab".repeat(32),
            signature: "c2ln".into(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn names_are_url_safe_and_not_dot_segments() {
        assert!(valid_name("otel-base_1.2"));
        for bad in ["a/b", "", ".", "..", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_label_key("team/ring") && !valid_label_key("a b"));
    }

    #[test]
    fn bad_packages_are_named() {
        let mut p = pkg();
        p.content_hash = "zz".into();
        let err = check_packages(&BTreeMap::from([("otelcol".to_owned(), p)])).unwrap_err();
        assert!(err.contains("otelcol") && err.contains("hex"), "{err}");
        let mut p = pkg();
        p.kind = "plugin".into();
        assert!(check_packages(&BTreeMap::from([("x".to_owned(), p)])).is_err());
        assert!(check_packages(&BTreeMap::from([("x".to_owned(), pkg())])).is_ok());
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let with = |h: Duration| AgentSettings {
            heartbeat_interval: Some(h),
            ..Default::default()
        };
        for bad in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(2 * 86_400),
            Duration::MAX,
        ] {
            let err = check_settings(&with(bad)).unwrap_err();
            assert!(err.contains("from 1s to 1day"), "{err}");
        }
        assert!(check_settings(&with(Duration::from_secs(30))).is_ok());
        let endpoint = |url: &str| AgentSettings {
            own_metrics: Some(TelemetryDestination {
                destination_endpoint: url.into(),
                headers: BTreeMap::new(),
            }),
            ..Default::default()
        };
        assert!(check_settings(&endpoint("https://otlp.example:4318")).is_ok());
        for bad in [
            "otlp.example:4318",
            "http://",
            "ftp://otlp.example",
            "https://a b",
        ] {
            let err = check_settings(&endpoint(bad)).unwrap_err();
            assert!(
                err.contains("own_metrics.destination_endpoint"),
                "{bad}: {err}"
            );
        }
        let header = |k: &str, v: &str| AgentSettings {
            own_logs: Some(TelemetryDestination {
                destination_endpoint: "https://otlp.example".into(),
                headers: BTreeMap::from([(k.to_owned(), v.to_owned())]),
            }),
            ..Default::default()
        };
        assert!(check_settings(&header("Authorization", "Bearer x")).is_ok());
        for (k, v) in [("", "x"), ("a b", "x"), ("x", "line\nbreak")] {
            let err = check_settings(&header(k, v)).unwrap_err();
            assert!(err.contains("own_logs.headers"), "{k:?}: {err}");
        }
    }
}
