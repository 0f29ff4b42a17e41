use super::*;

fn redact(body: &str) -> String {
    Redactor::default().redact(body)
}

#[test]
fn yaml_values_of_secret_keys_are_redacted() {
    let body = "\
password: hunter2
oauth2:
  client_secret: abc
- token: xyz
- - api-key: 'k'
X-Api-Key : v
";
    assert_eq!(
        redact(body),
        "\
password: <redacted>
oauth2:
  client_secret: <redacted>
- token: <redacted>
- - api-key: '<redacted>'
X-Api-Key : <redacted>
"
    );
}

#[test]
fn quotes_comments_and_commas_are_kept() {
    assert_eq!(
        redact("api_key: \"ab\\\"c\" # from vault\n"),
        "api_key: \"<redacted>\" # from vault\n"
    );
    assert_eq!(redact("secret: 'it''s'\n"), "secret: '<redacted>'\n");
    assert_eq!(
        redact("passwd: abc # note\n"),
        "passwd: <redacted> # note\n"
    );
    assert_eq!(
        redact("  \"token\": 12345,\n"),
        "  \"token\": <redacted>,\n"
    );
}

#[test]
fn env_references_are_redacted_too() {
    // The agent normally reports them expanded; if not, hiding the name costs nothing.
    assert_eq!(
        redact("api_key: ${env:API_KEY}\ntoken: \"${env:TOKEN}\"\n"),
        "api_key: <redacted>\ntoken: \"<redacted>\"\n"
    );
}

#[test]
fn matching_is_case_insensitive_and_unanchored() {
    // False positives (token_file, a file name) are accepted: see the module docs.
    assert_eq!(
        redact("Authorization: Basic dXNlcjpwYXNz\nTOKEN_FILE: /etc/token\n"),
        "Authorization: <redacted>\nTOKEN_FILE: <redacted>\n"
    );
}

#[test]
fn non_secret_lines_are_untouched() {
    let body = "\
# a comment: with a colon
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317   # keep me
    tls: {cert_file: /c.pem, key_file: /k.pem}
  hostmetrics:
    scrapers: [cpu, memory]
    description: |
      text: here
      - item
urls:
  - http://host:8080/path
  - https://user@example.com/
  - url: http://example.com:80
";
    assert_eq!(redact(body), body);
}

#[test]
fn pretty_json_is_redacted_line_by_line() {
    let body = r#"{
  "exporters": {
    "otlp": {
      "endpoint": "backend:4317",
      "headers": {
        "authorization": "Bearer abc",
        "x-tenant": "acme"
      },
      "api_key": "k1",
      "access_key": 42
    }
  },
  "tokens": [
    "t1",
    "t2"
  ],
  "names": [
    "n1"
  ]
}"#;
    let want = r#"{
  "exporters": {
    "otlp": {
      "endpoint": "backend:4317",
      "headers": {
        "authorization": "<redacted>",
        "x-tenant": "acme"
      },
      "api_key": "<redacted>",
      "access_key": <redacted>
    }
  },
  "tokens": [
    "<redacted>",
    "<redacted>"
  ],
  "names": [
    "n1"
  ]
}"#;
    assert_eq!(redact(body), want);
}

#[test]
fn minified_json_and_flow_mappings_are_redacted() {
    assert_eq!(
        redact(r#"{"user":"bob","password":"p","nested":{"api_key":"k","n":1}}"#),
        r#"{"user":"bob","password":"<redacted>","nested":{"api_key":"<redacted>","n":1}}"#
    );
    assert_eq!(
        redact("headers: {Authorization: Bearer x , X-Tenant: acme}\n"),
        "headers: {Authorization: <redacted> , X-Tenant: acme}\n"
    );
    // On a secret key's own line a flow collection is replaced whole.
    assert_eq!(
        redact("credentials: {user: a, pass: b}\n"),
        "credentials: <redacted>\n"
    );
}

#[test]
fn block_scalars_become_one_redacted_line() {
    let body = "\
tls:
  private_key: |
    -----BEGIN PRIVATE KEY-----
    MIIEvQIBADANBg

    -----END PRIVATE KEY-----

  cert: |
    not secret
items:
- secret: >-
    folded
    text
after: 1
";
    let want = "\
tls:
  private_key: |
    <redacted>

  cert: |
    not secret
items:
- secret: >-
    <redacted>
after: 1
";
    assert_eq!(redact(body), want);
}

#[test]
fn multi_line_scalars_of_secret_keys_are_dropped_after_the_first_line() {
    let body = "password: first\n  second\n  \"third\nuser: bob\ntoken: \"a\n  b\"\n";
    assert_eq!(
        redact(body),
        "password: <redacted>\nuser: bob\ntoken: \"<redacted>\"\n"
    );
}

#[test]
fn nested_mappings_under_secret_keys_are_checked_child_by_child() {
    let body = "\
credentials:
  username: bob
  password: p
  extra:
    region: eu
bearertokenauth:
  scheme: Bearer
  token: t
";
    let want = "\
credentials:
  username: bob
  password: <redacted>
  extra:
    region: eu
bearertokenauth:
  scheme: Bearer
  token: <redacted>
";
    assert_eq!(redact(body), want);
}

#[test]
fn keyless_list_items_take_their_parent_key_verdict() {
    let body = "\
api_keys:
  - k1
  - \"k2\" # second
  -
    - k3
tokens:
- t1
- {id: 1}
names:
  - n1
credentials:
  users:
    - alice
other:
  - o1
";
    let want = "\
api_keys:
  - <redacted>
  - \"<redacted>\" # second
  -
    - <redacted>
tokens:
- <redacted>
- {id: 1}
names:
  - n1
credentials:
  users:
    - alice
other:
  - o1
";
    assert_eq!(redact(body), want);
}

#[test]
fn url_userinfo_is_redacted_anywhere() {
    assert_eq!(
        redact("endpoint: https://user:pa55@host:443/path\n"),
        "endpoint: https://user:<redacted>@host:443/path\n"
    );
    assert_eq!(
        redact("# was redis://:p@ss@cache:6379/0 before\n"),
        "# was redis://:<redacted>@cache:6379/0 before\n"
    );
    assert_eq!(
        redact(r#"{"dsn": "postgres://app:s3cr3t@db/app", "x": 1}"#),
        r#"{"dsn": "postgres://app:<redacted>@db/app", "x": 1}"#
    );
    assert_eq!(
        redact("- http://a:b@h1 and ftp://c:d@h2\n"),
        "- http://a:<redacted>@h1 and ftp://c:<redacted>@h2\n"
    );
}

#[test]
fn crlf_line_endings_are_kept() {
    assert_eq!(
        redact("token: a\r\nkey: |\r\n  x\r\nsecret: |\r\n  y\r\n"),
        "token: <redacted>\r\nkey: |\r\n  x\r\nsecret: |\r\n  <redacted>\r\n"
    );
}

#[test]
fn custom_patterns_replace_the_defaults() {
    let r = Redactor::new(&["^pin$".to_owned()]).unwrap();
    assert_eq!(
        r.redact("PIN: 1234\npinned: yes\npassword: p\nu: http://a:b@h\n"),
        "PIN: <redacted>\npinned: yes\npassword: p\nu: http://a:<redacted>@h\n"
    );
    assert!(Redactor::new(&["(unclosed".to_owned()]).is_err());
    let none = Redactor::new(&[]).unwrap();
    assert_eq!(none.redact("password: p\n"), "password: p\n");
}

#[test]
fn default_patterns_cover_the_usual_names() {
    let r = Redactor::default();
    for key in [
        "password",
        "passwd",
        "db_passphrase",
        "client_secret",
        "token",
        "apikey",
        "api-key",
        "API_KEY",
        "Authorization",
        "credentials",
        "private_key",
        "privateKey",
        "bearer_token",
        "access_key_id",
    ] {
        assert!(r.is_secret(key), "{key}");
    }
    for key in [
        "endpoint", "username", "key_file", "insecure", "headers", "auth",
    ] {
        assert!(!r.is_secret(key), "{key}");
    }
}

#[test]
fn small_collector_config_exact_output() {
    let body = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  otlphttp:
    endpoint: https://ingest:hunter2@collector.example.com:4318
    headers:
      Authorization: \"Bearer abc123\"
      X-Tenant: acme
  prometheusremotewrite:
    endpoint: http://prom:9090/api/v1/write
    auth:
      authenticator: basicauth/client
extensions:
  basicauth/client:
    client_auth:
      username: scraper
      password: ${env:SCRAPER_PASSWORD}
  bearertokenauth:
    token: s3cr3t
service:
  extensions: [basicauth/client, bearertokenauth]
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [otlphttp, prometheusremotewrite]
";
    let want = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
exporters:
  otlphttp:
    endpoint: https://ingest:<redacted>@collector.example.com:4318
    headers:
      Authorization: \"<redacted>\"
      X-Tenant: acme
  prometheusremotewrite:
    endpoint: http://prom:9090/api/v1/write
    auth:
      authenticator: basicauth/client
extensions:
  basicauth/client:
    client_auth:
      username: scraper
      password: <redacted>
  bearertokenauth:
    token: <redacted>
service:
  extensions: [basicauth/client, bearertokenauth]
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [otlphttp, prometheusremotewrite]
";
    assert_eq!(redact(body), want);
}
