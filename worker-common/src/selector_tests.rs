use super::*;

fn sel(s: &str) -> Selector {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn err(s: &str) -> String {
    match s.parse::<Selector>() {
        Ok(parsed) => panic!("{s:?} should not parse, got {parsed:?}"),
        Err(e) => e.to_string(),
    }
}

fn term(key: &str, op: Op) -> Term {
    Term {
        key: key.into(),
        op,
    }
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn parses_each_operator() {
    let cases = [
        ("env=prod", term("env", Op::Eq("prod".into()))),
        ("env==prod", term("env", Op::Eq("prod".into()))),
        ("env!=prod", term("env", Op::NotEq("prod".into()))),
        ("env in (a,b)", term("env", Op::In(set(&["a", "b"])))),
        ("env notin (a,b)", term("env", Op::NotIn(set(&["a", "b"])))),
        ("env", term("env", Op::Exists)),
        ("!env", term("env", Op::NotExists)),
        (
            "k8s.io/os-name_1=linux",
            term("k8s.io/os-name_1", Op::Eq("linux".into())),
        ),
        ("in in (notin)", term("in", Op::In(set(&["notin"])))),
    ];
    for (input, want) in cases {
        assert_eq!(sel(input).terms(), [want], "{input:?}");
    }
}

#[test]
fn parses_several_terms_in_order_with_whitespace_ignored() {
    let s = sel("  env == prod ,tier in( b ,a , b),\t!legacy ,  zone,os notin(x) ,a!=b c ");
    assert_eq!(
        s.terms(),
        [
            term("env", Op::Eq("prod".into())),
            term("tier", Op::In(set(&["a", "b"]))),
            term("legacy", Op::NotExists),
            term("zone", Op::Exists),
            term("os", Op::NotIn(set(&["x"]))),
            term("a", Op::NotEq("b c".into())),
        ]
    );
    assert_eq!(sel("").terms(), []);
    assert_eq!(sel(" \t\n "), Selector::default());
}

#[test]
fn quoted_values_keep_specials_spaces_and_escapes() {
    let cases = [
        (r#"k="a,b (c)""#, "a,b (c)"),
        (r#"k="""#, ""),
        (r#"k=" padded ""#, " padded "),
        (r#"k = "say \"hi\"" "#, r#"say "hi""#),
        (r#"k="back\\slash""#, r"back\slash"),
        (r#"k="x=!y""#, "x=!y"),
    ];
    for (input, want) in cases {
        assert_eq!(
            sel(input).terms(),
            [term("k", Op::Eq(want.into()))],
            "{input:?}"
        );
    }
    assert_eq!(
        sel(r#"k in ("", "a,b", c)"#).terms(),
        [term("k", Op::In(set(&["", "a,b", "c"])))]
    );
    // Unquoted values may contain quotes and backslashes after their first character.
    assert_eq!(
        sel(r#"k=a"b\"#).terms(),
        [term("k", Op::Eq(r#"a"b\"#.into()))]
    );
}

#[test]
fn errors_quote_the_input_and_say_what_and_where() {
    let cases = [
        (
            "env in (a",
            r#"selector "env in (a": expected ")" at position 9"#,
        ),
        ("=x", r#"selector "=x": expected a key at position 0"#),
        ("a=b,", r#"selector "a=b,": expected a key at position 4"#),
        (",a=b", r#"selector ",a=b": expected a key at position 0"#),
        (
            "a=b,,c",
            r#"selector "a=b,,c": expected a key at position 4"#,
        ),
        ("!", r#"selector "!": expected a key at position 1"#),
        ("a, ! ", r#"selector "a, ! ": expected a key at position 5"#),
        (
            "k in ()",
            "expected at least one value in the list at position 6",
        ),
        (
            "k notin ( )",
            "expected at least one value in the list at position 10",
        ),
        (
            "k in (a,)",
            "expected a value (an empty value is written \"\") at position 8",
        ),
        ("k in a", r#"expected "(" at position 5"#),
        ("k in", r#"expected "(" at position 4"#),
        ("k in (a b", r#"expected ")" at position 9"#),
        (
            "k=",
            "expected a value (an empty value is written \"\") at position 2",
        ),
        (
            "k= ,x",
            "expected a value (an empty value is written \"\") at position 3",
        ),
        ("k!x", r#"expected "=" at position 2"#),
        ("k:v=1", r#"invalid character ':' in key"#),
        ("k:v=1", "at position 1"),
        ("é@=1", r#"invalid character '@' in key"#),
        (
            "a b",
            r#"expected an operator ("=", "!=", "in", "notin"), "," or the end at position 2"#,
        ),
        ("k inn (a)", "expected an operator"),
        (
            "k=a(b)",
            r#"'(' in a value needs the value to be quoted at position 3"#,
        ),
        (
            "k=a)",
            r#"')' in a value needs the value to be quoted at position 3"#,
        ),
        (
            "k=a=b",
            r#"'=' in a value needs the value to be quoted at position 3"#,
        ),
        (
            "k in (a!)",
            r#"'!' in a value needs the value to be quoted at position 7"#,
        ),
        (r#"k="a" b"#, r#"expected "," or the end at position 6"#),
        ("!k=v", r#"expected "," or the end at position 2"#),
        (r#"k="abc"#, "quoted value is not closed at position 2"),
        (r#"k="abc\"#, "quoted value is not closed at position 2"),
        (
            r#"k="a\nb""#,
            r#"unknown escape "\n" (only \" and \\ are allowed) at position 4"#,
        ),
    ];
    for (input, want) in cases {
        let got = err(input);
        assert!(got.contains(want), "{input:?}: got {got:?}, want {want:?}");
        assert!(got.starts_with(&format!("selector {input:?}: ")), "{got}");
    }
}

#[test]
fn matching_semantics() {
    let agent = attrs(&[("env", "prod"), ("tier", "web")]);
    // (selector, matches the agent above)
    let cases = [
        ("", true),
        ("env=prod", true),
        ("env=dev", false),
        ("zone=eu", false),
        ("env!=dev", true),
        ("env!=prod", false),
        ("zone!=eu", true), // absent key: != holds
        ("env in (dev,prod)", true),
        ("env in (dev,qa)", false),
        ("zone in (eu,us)", false),
        ("env notin (dev,qa)", true),
        ("env notin (prod)", false),
        ("zone notin (eu)", true), // absent key: notin holds
        ("env", true),
        ("zone", false),
        ("!zone", true),
        ("!env", false),
        ("env=prod,tier=web", true),
        ("env=prod,tier=db", false),
        ("env=prod,!zone,tier in (web,api),os notin (windows)", true),
        (r#"env="""#, false),
    ];
    for (s, want) in cases {
        assert_eq!(sel(s).matches(&agent), want, "{s:?} on {agent:?}");
    }
    assert!(sel(r#"env="""#).matches(&attrs(&[("env", "")])));
    assert!(sel("env").matches(&attrs(&[("env", "")])));
    assert!(sel("").matches(&BTreeMap::new()));
}

#[test]
fn display_is_canonical() {
    let cases = [
        ("", ""),
        (
            "  env == prod , tier in ( b , a )",
            "env=prod,tier in (a,b)",
        ),
        ("a!=b,c notin (z, y),d,!e", "a!=b,c notin (y,z),d,!e"),
        (r#"k="plain""#, "k=plain"),
        (r#"k="""#, r#"k="""#),
        (r#"k="a,b""#, r#"k="a,b""#),
        (r#"k="a b""#, r#"k="a b""#),
        (r#"k="say \"hi\" \\""#, r#"k="say \"hi\" \\""#),
        (r#"k in ("x)", " y")"#, r#"k in (" y","x)")"#),
        ("z=1,a=2", "z=1,a=2"),
    ];
    for (input, want) in cases {
        assert_eq!(sel(input).to_string(), want, "{input:?}");
    }
}

/// Property-style: every selector built from awkward keys and values survives
/// display -> parse unchanged, and its display is a fixed point.
#[test]
fn display_then_parse_round_trips() {
    let keys = ["k", "a.b/c-d_e", "in", "notin", "ключ", "9"];
    let values = [
        "",
        " ",
        "v",
        "a,b",
        "(x)",
        "=",
        "==",
        "!",
        "!=",
        "\"",
        "\\",
        "\\\"",
        " lead",
        "trail ",
        "a b",
        "\t",
        "line\nbreak",
        "ünï",
        "in",
        "notin (a)",
        "a\"b\\c",
    ];
    let mut checked = 0;
    for (i, key) in keys.iter().enumerate() {
        for (j, value) in values.iter().enumerate() {
            let other = values[(i + j + 1) % values.len()];
            let ops = [
                Op::Eq(value.to_string()),
                Op::NotEq(value.to_string()),
                Op::In(set(&[value, other])),
                Op::NotIn(set(&[value])),
                Op::Exists,
                Op::NotExists,
            ];
            for op in ops {
                let s = Selector {
                    terms: vec![term(key, op), term("z", Op::Eq(other.into()))],
                };
                let text = s.to_string();
                let back = sel(&text);
                assert_eq!(back, s, "via {text:?}");
                assert_eq!(back.to_string(), text);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, keys.len() * values.len() * 6);
}

#[test]
fn from_pairs_sorts_by_key_and_later_pairs_win() {
    let s = Selector::from_pairs([
        ("tier".to_string(), "web".to_string()),
        ("env".to_string(), "dev".to_string()),
        ("env".to_string(), "prod".to_string()),
    ]);
    assert_eq!(s, sel("env=prod,tier=web"));
    assert_eq!(s.specificity(), 2);
    assert!(Selector::from_pairs(Vec::new()).is_empty());
}

#[test]
fn specificity_counts_terms() {
    assert_eq!(sel("").specificity(), 0);
    assert!(sel("").is_empty());
    assert_eq!(sel("env").specificity(), 1);
    assert_eq!(sel("env=prod,tier in (a,b),!legacy").specificity(), 3);
    assert!(!sel("!x").is_empty());
}

#[test]
fn serde_reads_a_string_or_a_map_and_writes_the_string() {
    let from_str: Selector = serde_json::from_str(r#""env = prod, tier in (b,a)""#).unwrap();
    assert_eq!(from_str, sel("env=prod,tier in (a,b)"));

    let from_map: Selector =
        serde_json::from_str(r#"{"tier": "web", "env": "prod", "e": ""}"#).unwrap();
    assert_eq!(from_map, sel(r#"e="",env=prod,tier=web"#));
    assert_eq!(
        serde_json::from_str::<Selector>("{}").unwrap(),
        Selector::default()
    );
    assert_eq!(
        serde_json::from_str::<Selector>("null").unwrap(),
        Selector::default()
    );

    let json = serde_json::to_string(&sel(r#"k in ("a,b",c),!x"#)).unwrap();
    assert_eq!(json, r#""k in (\"a,b\",c),!x""#);
    for s in [
        "",
        "a=b",
        r#"k in ("a,b",c),!x,y!="""#,
        "e=prod,t notin (q)",
    ] {
        let s = sel(s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(serde_json::from_value::<Selector>(json).unwrap(), s);
    }
}

#[test]
fn serde_errors_are_clear() {
    let e = serde_json::from_str::<Selector>(r#""env in (a""#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"selector "env in (a": expected ")" at position 9"#),
        "{e}"
    );

    let e = serde_json::from_str::<Selector>(r#"{"": "x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("selector keys must not be empty"), "{e}");

    let e = serde_json::from_str::<Selector>(r#"{"a b": "x"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"selector key "a b" has the character ' '"#),
        "{e}"
    );

    let e = serde_json::from_str::<Selector>(r#"{"a": "x", "a": "y"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"selector key "a" appears more than once"#),
        "{e}"
    );

    let e = serde_json::from_str::<Selector>(r#"{"a": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a string"), "{e}");

    let e = serde_json::from_str::<Selector>("7")
        .unwrap_err()
        .to_string();
    assert!(e.contains("a selector string like"), "{e}");
}

#[test]
fn use_sites_take_a_string_a_table_or_nothing() {
    #[derive(Deserialize, Serialize)]
    struct Config {
        #[serde(default)]
        selector: Selector,
    }
    let rest: Config = serde_json::from_str(r#"{"selector": {"env": "prod"}}"#).unwrap();
    assert_eq!(rest.selector, sel("env=prod"));
    assert_eq!(
        serde_json::to_string(&rest).unwrap(),
        r#"{"selector":"env=prod"}"#
    );
    let missing: Config = serde_json::from_str("{}").unwrap();
    assert!(missing.selector.is_empty());

    let table: Config =
        toml::from_str("[selector]\nenv = \"prod\"\n\"k8s.io/os\" = \"linux\"\n").unwrap();
    assert_eq!(table.selector, sel("env=prod,k8s.io/os=linux"));
    let string: Config = toml::from_str("selector = 'env!=dev,!legacy'\n").unwrap();
    assert_eq!(string.selector, sel("env!=dev,!legacy"));
    let missing: Config = toml::from_str("").unwrap();
    assert!(missing.selector.is_empty());
}
