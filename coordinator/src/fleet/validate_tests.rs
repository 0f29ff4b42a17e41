use super::*;

fn one(name: &str, body: &str) -> Result<(), Vec<Problem>> {
    validate_files(&BTreeMap::from([(name.to_owned(), body.to_owned())]))
}

/// The problems as `file:line:col: message` strings, which is what a user reads.
fn problems(name: &str, body: &str) -> Vec<String> {
    match one(name, body) {
        Ok(()) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

const VALID: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
  prometheus/self:
    config: {}
processors:
  batch:
  memory_limiter/tight:
    limit_mib: 100
exporters:
  otlp/backend:
    endpoint: backend:4317
  debug:
connectors:
  spanmetrics:
  forward/logs:
extensions:
  health_check:
  pprof/dev:
service:
  extensions: [health_check, pprof/dev]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter/tight, batch]
      exporters: [otlp/backend, spanmetrics]
    metrics:
      receivers:
        - otlp
        - prometheus/self
        - spanmetrics
      exporters: [otlp/backend]
    logs/in:
      receivers: [otlp]
      exporters: [forward/logs]
    logs/out:
      receivers: [forward/logs]
      processors: []
      exporters: [debug, otlp/backend]
";

#[test]
fn valid_multi_pipeline_config_with_connectors_passes() {
    assert_eq!(one("collector.yaml", VALID), Ok(()));
}

#[test]
fn undefined_receiver_is_reported_at_its_reference() {
    let body = VALID.replace(
        "receivers: [otlp]\n      processors: [memory",
        "receivers: [otlp/2]\n      processors: [memory",
    );
    assert_eq!(
        problems("collector.yaml", &body),
        [
            "collector.yaml:25:19: pipeline \"traces\" uses receiver \"otlp/2\", which is not \
                 defined under \"receivers\" or \"connectors\""
        ]
    );
}

#[test]
fn undefined_processor_is_reported_at_its_reference() {
    let body = VALID.replace(
        "[memory_limiter/tight, batch]",
        "[memory_limiter/tight, batch/2]",
    );
    assert_eq!(
        problems("collector.yaml", &body),
        [
            "collector.yaml:26:42: pipeline \"traces\" uses processor \"batch/2\", which is \
                 not defined under \"processors\""
        ]
    );
}

#[test]
fn undefined_exporter_in_block_list_is_reported_at_its_reference() {
    let body = "\
receivers:
  otlp:
exporters:
  otlp:
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters:
        - otlp
        - otlp/2
";
    assert_eq!(
        problems("c.yml", body),
        [
            "c.yml:11:11: pipeline \"traces\" uses exporter \"otlp/2\", which is not defined \
                 under \"exporters\" or \"connectors\""
        ]
    );
}

#[test]
fn undefined_extension_is_reported_at_its_reference() {
    let body = VALID.replace("[health_check, pprof/dev]", "[health_check, zpages]");
    let got = one("collector.yaml", &body).unwrap_err();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        Problem {
            file: "collector.yaml".into(),
            line: Some(22),
            column: Some(30),
            message: "service.extensions uses extension \"zpages\", which is not defined \
                          under \"extensions\""
                .into(),
        }
    );
}

#[test]
fn bad_pipeline_types_and_empty_names_are_reported() {
    let body = "\
receivers: {otlp: }
exporters: {debug: }
service:
  pipelines:
    trace:
      receivers: [otlp]
      exporters: [debug]
    metrics/:
      receivers: [otlp]
      exporters: [debug]
    logs/ok:
      receivers: [otlp]
      exporters: [debug]
    profiles:
      receivers: [otlp]
      exporters: [debug]
";
    let got = problems("c.yaml", body);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("c.yaml:5:5: pipeline \"trace\" has unknown type \"trace\""));
    assert!(got[1].starts_with("c.yaml:8:5: pipeline \"metrics/\" has an empty name"));
}

#[test]
fn missing_pipelines_is_reported() {
    let body = "receivers: {otlp: }\nservice:\n  extensions: []\n";
    assert_eq!(
        problems("c.yaml", body),
        ["c.yaml:2:1: service.pipelines is missing"]
    );
}

#[test]
fn service_and_pipelines_of_the_wrong_shape_are_reported() {
    assert_eq!(
        problems("a.yaml", "service: []\n"),
        ["a.yaml:1:1: service must be a mapping"]
    );
    assert_eq!(
        problems("b.yaml", "service:\n  pipelines: [traces]\n"),
        ["b.yaml:2:3: service.pipelines must be a mapping"]
    );
    assert_eq!(
        problems(
            "c.yaml",
            "service:\n  pipelines:\n    traces:\n    logs:\n      receivers: otlp\n      \
                 exporters: []\n"
        ),
        [
            "c.yaml:3:5: pipeline \"traces\" must be a mapping with receivers and exporters",
            "c.yaml:5:7: pipeline \"logs\": receivers must be a list of receiver ids",
            "c.yaml:6:7: pipeline \"logs\" must have at least one exporter",
        ]
    );
}

#[test]
fn pipelines_without_receivers_or_exporters_are_reported() {
    let body = "\
receivers: {otlp: }
service:
  pipelines:
    traces:
      receivers: [otlp]
    metrics:
      receivers:
      exporters: [{nested: map}]
";
    assert_eq!(
        problems("c.yaml", body),
        [
            "c.yaml:4:5: pipeline \"traces\" must have at least one exporter",
            "c.yaml:7:7: pipeline \"metrics\" must have at least one receiver",
            "c.yaml:8:19: pipeline \"metrics\": exporters entries must be component ids \
                 (strings)",
        ]
    );
}

#[test]
fn yaml_syntax_error_carries_the_parser_position() {
    let body = "receivers:\n  otlp:\n    endpoint: [unclosed\nexporters:\n";
    let got = one("collector.yaml", body).unwrap_err();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, Some(4));
    assert!(got[0].column.is_some());
    assert!(got[0].message.starts_with("invalid YAML: "), "{}", got[0]);
}

#[test]
fn yaml_duplicate_keys_are_an_error() {
    let got = problems("x.yaml", "a: 1\nb: 2\na: 3\n");
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("x.yaml:3:"), "{got:?}");
}

#[test]
fn yaml_extension_is_case_insensitive() {
    assert!(one("C.YML", "a: [").is_err());
    assert!(one("c.Yaml", "a: [").is_err());
}

#[test]
fn json_error_carries_line_and_column() {
    let got = one("settings.json", "{\n  \"a\": 1,\n  \"b\": }\n").unwrap_err();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].line, Some(3));
    assert_eq!(got[0].column, Some(8));
    assert_eq!(
        got[0].to_string(),
        "settings.json:3:8: invalid JSON: expected value"
    );
    assert_eq!(one("ok.JSON", "{\"a\": [1, 2]}"), Ok(()));
}

#[test]
fn other_files_are_not_checked() {
    assert_eq!(one("notes.txt", "service: [unclosed"), Ok(()));
    assert_eq!(one("yaml", "{{{"), Ok(()));
}

#[test]
fn non_collector_yaml_passes_if_it_parses() {
    assert_eq!(
        one("values.yaml", "replicas: 3\npipelines: nonsense\n"),
        Ok(())
    );
    assert_eq!(one("list.yaml", "- a\n- b\n"), Ok(()));
    assert_eq!(one("empty.yaml", ""), Ok(()));
}

#[test]
fn every_problem_in_every_file_is_collected() {
    let collector = "\
receivers: {otlp: }
exporters: {debug: }
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp, jaeger]
      processors: [batch]
      exporters: [debug]
    spans:
      receivers: [otlp]
      exporters: [debug]
";
    let files = BTreeMap::from([
        ("collector.yaml".to_owned(), collector.to_owned()),
        ("bad.json".to_owned(), "[1, 2".to_owned()),
        // Beside a collector config, read as YAML as the supervisor would.
        ("README.md".to_owned(), "not YAML: [".to_owned()),
    ]);
    let mut got: Vec<String> = validate_files(&files)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got.len(), 6, "{got:#?}");
    assert!(got.remove(0).starts_with("README.md:2:1: invalid YAML: "));
    assert!(
        got[0].starts_with("bad.json:1:5: invalid JSON: "),
        "{got:#?}"
    );
    assert!(
        got[1]
            .starts_with("collector.yaml:4:16: service.extensions uses extension \"health_check\"")
    );
    assert!(
        got[2].starts_with("collector.yaml:7:25: pipeline \"traces\" uses receiver \"jaeger\"")
    );
    assert!(
        got[3].starts_with("collector.yaml:8:20: pipeline \"traces\" uses processor \"batch\"")
    );
    assert!(got[4].starts_with("collector.yaml:10:5: pipeline \"spans\" has unknown type"));
}

#[test]
fn component_ids_with_names_must_match_exactly() {
    let body = "\
receivers:
  otlp/internal:
exporters:
  otlp:
service:
  pipelines:
    traces/a:
      receivers: [otlp/internal, otlp]
      exporters: [otlp, otlp/internal]
";
    assert_eq!(
        problems("c.yaml", body),
        [
            "c.yaml:8:34: pipeline \"traces/a\" uses receiver \"otlp\", which is not defined \
                 under \"receivers\" or \"connectors\"",
            "c.yaml:9:25: pipeline \"traces/a\" uses exporter \"otlp/internal\", which is not \
                 defined under \"exporters\" or \"connectors\"",
        ]
    );
}

#[test]
fn connector_used_only_as_exporter_or_only_as_receiver_is_reported() {
    let body = "\
receivers: {otlp: }
exporters: {debug: }
connectors:
  spanmetrics:
  count:
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [spanmetrics]
    metrics:
      receivers: [count]
      exporters: [debug]
";
    assert_eq!(
        problems("c.yaml", body),
        [
            "c.yaml:10:19: connector \"spanmetrics\" used as exporter in [traces] pipeline \
                 but not used as receiver in any other pipeline",
            "c.yaml:12:19: connector \"count\" used as receiver in [metrics] pipeline but \
                 not used as exporter in any other pipeline",
        ]
    );
}

#[test]
fn connector_on_both_sides_of_one_pipeline_does_not_count() {
    let body = "\
connectors: {forward: }
service:
  pipelines:
    logs:
      receivers: [forward]
      exporters: [forward]
";
    let got = problems("c.yaml", body);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].contains("used as receiver in [logs] pipeline"));
    assert!(got[1].contains("used as exporter in [logs] pipeline"));
}

#[test]
fn display_without_a_position() {
    let p = Problem {
        file: "a.yaml".into(),
        line: None,
        column: None,
        message: "something".into(),
    };
    assert_eq!(p.to_string(), "a.yaml: something");
}

#[test]
fn a_collector_config_split_over_files_is_checked_as_the_supervisor_merges_it() {
    let files = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let service = "service:\n  pipelines:\n    traces: {receivers: [otlp], exporters: [debug]}\n";
    let split = files(&[
        (
            "components.yaml",
            "receivers: {otlp: }\nexporters: {debug: }\n",
        ),
        ("service.yaml", service),
    ]);
    assert_eq!(validate_files(&split), Ok(()), "defined in another file");
    let missing = files(&[
        ("components.yaml", "receivers: {otlp: }\n"),
        ("service.yaml", service),
    ]);
    let got: Vec<String> = validate_files(&missing)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("service.yaml:3:") && got[0].contains("\"debug\""),
        "{got:?}"
    );
    // The "" file is YAML; beside a collector config, so is every other file.
    let mut whole = files(&[("", "receivers: {otlp: }\nexporters: {debug: }\n")]);
    whole.insert("service.yaml".into(), service.into());
    whole.insert("notes.txt".into(), "a: [unclosed".into());
    let got = validate_files(&whole).unwrap_err();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].file, "notes.txt");
    assert!(got[0].message.contains("reads every file"), "{got:?}");
    assert!(validate_files(&files(&[("", "a: [")])).is_err());
}

#[test]
fn nesting_past_the_limit_is_a_problem_not_a_crash() {
    let deep = format!("{}x\n", "- ".repeat(100_000));
    let got = problems("deep.yaml", &deep);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("deep.yaml: nested deeper than 64 levels"),
        "{got:?}"
    );
}

fn many(files: &[(&str, &str)]) -> Vec<String> {
    let files = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_string()))
        .collect();
    match validate_files(&files) {
        Ok(()) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_service_split_over_files_is_checked_as_the_supervisor_merges_it() {
    let components = "receivers: {otlp: }\nexporters: {debug: }\nconnectors: {forward: }\n\
                      extensions: {health_check: }\n";
    // Extensions in one file, a pipeline's lists in two others, a connector joining pipelines
    // of different files; an undefined exporter in a list a later file replaces.
    let split = [
        ("a.yaml", "service: {extensions: [health_check]}"),
        (
            "b.yaml",
            "service: {pipelines: {traces: {receivers: [otlp], exporters: [nope]}, \
             logs: {receivers: [otlp], exporters: [forward]}}}",
        ),
        (
            "c.yaml",
            "service: {pipelines: {traces: {exporters: [debug]}}}",
        ),
        (
            "",
            "service: {pipelines: {logs/2: {receivers: [forward], exporters: [debug]}}}",
        ),
        ("components.yaml", components),
    ];
    assert_eq!(many(&split), Vec::<String>::new());

    // What the merged config lacks is reported once, where it would go.
    assert_eq!(
        many(&[
            ("a.yaml", "service: {extensions: []}"),
            ("b.yaml", components)
        ]),
        ["a.yaml:1:1: service.pipelines is missing"]
    );
    assert_eq!(
        many(&[
            (
                "a.yaml",
                "service: {pipelines: {traces: {receivers: [otlp]}}}"
            ),
            (
                "b.yaml",
                "service: {pipelines: {traces: {receivers: [otlp]}}}"
            ),
            ("c.yaml", components),
        ]),
        ["b.yaml:1:23: pipeline \"traces\" must have at least one exporter"]
    );
    // The "" file goes last: its list replaces the others'.
    assert_eq!(
        many(&[
            ("", "service: {pipelines: {traces: {exporters: [nope]}}}"),
            (
                "a.yaml",
                "service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}"
            ),
            ("c.yaml", components),
        ]),
        [
            ":1:44: pipeline \"traces\" uses exporter \"nope\", which is not defined under \"exporters\" or \"connectors\""
        ]
    );
}
