//! The OpenAPI document of the admin REST API, served at `GET /api/v1/openapi.json`.
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::DOCUMENT;
    use serde_json::Value;

    /// Every route of [`crate::api::router`] as (method, path). Keep it in step with the router:
    /// the test below fails when the document and this list disagree.
    const ROUTES: &[(&str, &str)] = &[
        ("GET", "/api/v1/fleet/health"),
        ("GET", "/api/v1/fleet/overview"),
        ("GET", "/api/v1/fleet/agent-metrics"),
        ("GET", "/api/v1/agents"),
        ("GET", "/api/v1/agents/{uid}"),
        ("DELETE", "/api/v1/agents/{uid}"),
        ("POST", "/api/v1/agents/{uid}/restart"),
        ("POST", "/api/v1/agents/{uid}/custom-messages"),
        ("POST", "/api/v1/agents/{uid}/certificate"),
        ("GET", "/api/v1/agents/{uid}/labels"),
        ("POST", "/api/v1/agents/{uid}/labels"),
        ("GET", "/api/v1/configs"),
        ("GET", "/api/v1/configs/{name}"),
        ("PUT", "/api/v1/configs/{name}"),
        ("DELETE", "/api/v1/configs/{name}"),
        ("GET", "/api/v1/configs/{name}/versions"),
        ("GET", "/api/v1/configs/{name}/versions/{version}"),
        ("GET", "/api/v1/configs/{name}/diff"),
        ("POST", "/api/v1/configs/{name}/rollback"),
        ("GET", "/api/v1/rollouts"),
        ("POST", "/api/v1/rollouts"),
        ("GET", "/api/v1/rollouts/{id}"),
        ("POST", "/api/v1/rollouts/{id}/{action}"),
        ("GET", "/api/v1/region-rollouts"),
        ("POST", "/api/v1/region-rollouts"),
        ("GET", "/api/v1/region-rollouts/{id}"),
        ("POST", "/api/v1/restarts"),
        ("GET", "/api/v1/restarts/{id}"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/openapi.json"),
    ];

    /// The keys of an OpenAPI path item that are operations.
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("$ref", Value::String(r)) => out.push(r),
                            _ => refs(x, out),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local references only");
            assert!(doc.pointer(pointer).is_some(), "{r} points at nothing");
        }
    }

    #[test]
    fn document_lists_exactly_the_routes() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3."), "openapi is {version:?}, not 3.x");
        let paths = doc["paths"].as_object().expect("the document has paths");

        for &(method, path) in ROUTES {
            let documented = paths
                .get(path)
                .and_then(|item| item.get(method.to_ascii_lowercase().as_str()))
                .is_some();
            assert!(
                documented,
                "{method} {path} is routed but not in openapi.json"
            );
        }

        let routed = |method: &str, path: &str| {
            ROUTES
                .iter()
                .any(|&(m, p)| m.eq_ignore_ascii_case(method) && p == path)
        };
        for (path, item) in paths {
            assert!(
                ROUTES.iter().any(|&(_, p)| p == path.as_str()),
                "openapi.json documents {path}, which is not routed"
            );
            let item = item.as_object().expect("a path item is an object");
            for key in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
                assert!(
                    routed(key, path),
                    "openapi.json documents {} {path}, which is not routed",
                    key.to_ascii_uppercase()
                );
            }
        }
    }
}
