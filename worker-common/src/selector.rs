//! Agent selectors: which agents a config or a query applies to. The string form is the grammar of
//! Kubernetes label selectors, so operators can reuse what they already know.
//!
//! A selector is a list of terms separated by commas; an agent matches when every term holds for
//! its attributes:
//!
//! | term            | holds when attribute `k` ...        |
//! |-----------------|-------------------------------------|
//! | `k=v`, `k==v`   | is present and equals `v`           |
//! | `k!=v`          | is absent, or is not `v`            |
//! | `k in (a,b)`    | is present and is one of the values |
//! | `k notin (a,b)` | is absent, or is none of the values |
//! | `k`             | is present                          |
//! | `!k`            | is absent                           |
//!
//! `!=` and `notin` hold for agents without the key, as in Kubernetes: "not in prod" includes the
//! agents that say nothing about their environment.
//!
//! Whitespace around tokens is ignored. Keys are letters, digits, `.`, `_`, `-` and `/`. An unquoted
//! value runs up to the next `,` `(` `)` `=` or `!` and is trimmed; a value that contains one of
//! those, has surrounding whitespace, or is empty is written double-quoted, with `\"` and `\\` as
//! the only escapes (`k="a,b (c)"`, `k=""`). `in` and `notin` need at least one value. An empty or
//! blank string is the empty selector: no terms, so it matches every agent and serves as a fleet
//! default. When several selectors match, the one with more terms wins
//! ([`Selector::specificity`]). Error positions count characters from 0.
//!
//! `Display` writes the canonical form, which parses back to the same selector: terms in their
//! original order, set values sorted and joined by `,`, and values quoted only when they are
//! empty or contain `,` `(` `)` `=` `!` `"` `\` or whitespace (inner whitespace would parse
//! unquoted, but `in ("us east",eu)` cannot be misread).
//!
//! Serde: a selector serializes as its canonical string. It deserializes from such a string, or
//! from an object of key to value with one `=` term per pair, which is the REST contract
//! `{"selector": {"k": "v"}}` and the form of already-stored data. Object keys must be non-empty,
//! unique, and follow the key grammar, since a selector is written back as a string. `null` is the
//! empty selector; a *missing* field needs `#[serde(default)]` at the use site. Deserializing uses
//! `deserialize_any`, so it needs a self-describing format (JSON, TOML).

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Terms that must all hold; see the module docs for the grammar.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    terms: Vec<Term>,
}

/// One condition on one attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    NotExists,
}

/// A selector string that does not follow the grammar. The message quotes the whole input, so it
/// can be shown to an API caller as is.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("selector {input:?}: {problem} at position {position}")]
pub struct SelectorError {
    input: String,
    position: usize,
    problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
enum Problem {
    #[error("expected a key")]
    ExpectedKey,
    #[error(
        "invalid character {0:?} in key (keys use letters, digits, \".\", \"_\", \"-\", \"/\")"
    )]
    BadKeyChar(char),
    #[error("expected an operator (\"=\", \"!=\", \"in\", \"notin\"), \",\" or the end")]
    ExpectedOperator,
    #[error("expected \",\" or the end")]
    ExpectedCommaOrEnd,
    #[error("expected \"{0}\"")]
    Expected(&'static str),
    #[error("expected a value (an empty value is written \"\")")]
    ExpectedValue,
    #[error("{0:?} in a value needs the value to be quoted")]
    Unquoted(char),
    #[error("expected at least one value in the list")]
    EmptyList,
    #[error("quoted value is not closed")]
    UnclosedQuote,
    #[error("unknown escape \"\\{0}\" (only \\\" and \\\\ are allowed)")]
    BadEscape(char),
}

impl Selector {
    /// One `=` term per pair, ordered by key. As when collecting into a map, a later pair replaces
    /// an earlier one with the same key. Keys are not checked against the grammar; one outside it
    /// would not survive a trip through the string form.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Selector {
        let pairs: BTreeMap<String, String> = pairs.into_iter().collect();
        let terms = pairs
            .into_iter()
            .map(|(key, v)| Term { key, op: Op::Eq(v) })
            .collect();
        Selector { terms }
    }

    /// Does every term hold for an agent with these attributes?
    pub fn matches(&self, attrs: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| t.matches(attrs.get(&t.key)))
    }

    /// The number of terms: among matching selectors, the more specific one takes precedence.
    pub fn specificity(&self) -> usize {
        self.terms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

impl Term {
    fn matches(&self, value: Option<&String>) -> bool {
        match (&self.op, value) {
            (Op::Eq(want), Some(v)) => v == want,
            (Op::NotEq(want), v) => v != Some(want),
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            (Op::Eq(_) | Op::In(_), None) => false,
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Characters that end an unquoted value.
fn is_value_special(c: char) -> bool {
    matches!(c, ',' | '(' | ')' | '=' | '!')
}

fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| is_value_special(c) || c == '"' || c == '\\' || c.is_whitespace())
}

fn write_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if !needs_quotes(v) {
        return f.write_str(v);
    }
    f.write_str("\"")?;
    for c in v.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

fn write_set(f: &mut fmt::Formatter<'_>, set: &BTreeSet<String>) -> fmt::Result {
    f.write_str("(")?;
    for (i, v) in set.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write_value(f, v)?;
    }
    f.write_str(")")
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            Op::Eq(v) => {
                write!(f, "{key}=")?;
                write_value(f, v)
            }
            Op::NotEq(v) => {
                write!(f, "{key}!=")?;
                write_value(f, v)
            }
            Op::In(set) => {
                write!(f, "{key} in ")?;
                write_set(f, set)
            }
            Op::NotIn(set) => {
                write!(f, "{key} notin ")?;
                write_set(f, set)
            }
            Op::Exists => f.write_str(key),
            Op::NotExists => write!(f, "!{key}"),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut p = Parser {
            input,
            chars: input.chars().collect(),
            pos: 0,
        };
        p.skip_ws();
        let mut terms = Vec::new();
        if p.peek().is_none() {
            return Ok(Selector { terms });
        }
        loop {
            terms.push(p.term()?);
            p.skip_ws();
            match p.peek() {
                None => return Ok(Selector { terms }),
                Some(',') => p.pos += 1,
                Some(_) => return Err(p.fail(p.pos, Problem::ExpectedCommaOrEnd)),
            }
        }
    }
}

/// Whether a value is read inside `( )`, where `)` ends it rather than being an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Within {
    Term,
    List,
}

struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Parser<'_> {
    fn fail(&self, position: usize, problem: Problem) -> SelectorError {
        SelectorError {
            input: self.input.to_owned(),
            position,
            problem,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_key_char) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let key = self.word();
        if key.is_empty() {
            return Err(self.fail(self.pos, Problem::ExpectedKey));
        }
        Ok(key)
    }

    fn term(&mut self) -> Result<Term, SelectorError> {
        self.skip_ws();
        if self.eat('!') {
            self.skip_ws();
            let key = self.key()?;
            return Ok(Term {
                key,
                op: Op::NotExists,
            });
        }
        let key = self.key()?;
        let key_end = self.pos;
        self.skip_ws();
        let op_at = self.pos;
        let op = match self.peek() {
            None | Some(',') => Op::Exists,
            Some('=') => {
                self.pos += 1;
                self.eat('=');
                Op::Eq(self.value(Within::Term)?)
            }
            Some('!') => {
                self.pos += 1;
                if !self.eat('=') {
                    return Err(self.fail(self.pos, Problem::Expected("=")));
                }
                Op::NotEq(self.value(Within::Term)?)
            }
            Some(c) if op_at == key_end => return Err(self.fail(op_at, Problem::BadKeyChar(c))),
            Some(_) => match self.word().as_str() {
                "in" => Op::In(self.list()?),
                "notin" => Op::NotIn(self.list()?),
                _ => return Err(self.fail(op_at, Problem::ExpectedOperator)),
            },
        };
        Ok(Term { key, op })
    }

    fn list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_ws();
        if !self.eat('(') {
            return Err(self.fail(self.pos, Problem::Expected("(")));
        }
        self.skip_ws();
        if self.peek() == Some(')') {
            return Err(self.fail(self.pos, Problem::EmptyList));
        }
        let mut set = BTreeSet::new();
        loop {
            set.insert(self.value(Within::List)?);
            self.skip_ws();
            if self.eat(')') {
                return Ok(set);
            }
            if !self.eat(',') {
                return Err(self.fail(self.pos, Problem::Expected(")")));
            }
        }
    }

    fn value(&mut self, within: Within) -> Result<String, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        if self.eat('"') {
            return self.quoted(start);
        }
        while self.peek().is_some_and(|c| !is_value_special(c)) {
            self.pos += 1;
        }
        let raw: String = self.chars[start..self.pos].iter().collect();
        let value = raw.trim();
        match self.peek() {
            Some(c @ ('(' | '=' | '!')) => return Err(self.fail(self.pos, Problem::Unquoted(c))),
            Some(')') if within == Within::Term => {
                return Err(self.fail(self.pos, Problem::Unquoted(')')));
            }
            _ => {}
        }
        if value.is_empty() {
            return Err(self.fail(start, Problem::ExpectedValue));
        }
        Ok(value.to_owned())
    }

    /// After the opening quote at `start`.
    fn quoted(&mut self, start: usize) -> Result<String, SelectorError> {
        let mut value = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.fail(start, Problem::UnclosedQuote));
            };
            self.pos += 1;
            match c {
                '"' => return Ok(value),
                '\\' => match self.peek() {
                    Some(e @ ('"' | '\\')) => {
                        value.push(e);
                        self.pos += 1;
                    }
                    Some(e) => return Err(self.fail(self.pos - 1, Problem::BadEscape(e))),
                    None => return Err(self.fail(start, Problem::UnclosedQuote)),
                },
                c => value.push(c),
            }
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SelectorVisitor)
    }
}

/// A visitor rather than an untagged enum, so a bad string reports the grammar error itself
/// instead of "did not match any variant".
struct SelectorVisitor;

impl<'de> Visitor<'de> for SelectorVisitor {
    type Value = Selector;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a selector string like \"env=prod,tier in (a,b)\" or a map of key to value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Selector, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Selector, E> {
        Ok(Selector::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<Selector, E> {
        Ok(Selector::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Selector, A::Error> {
        let mut pairs = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, String>()? {
            if key.is_empty() {
                return Err(de::Error::custom("selector keys must not be empty"));
            }
            // Such a key would serialize to a string that cannot be read back.
            if let Some(c) = key.chars().find(|c| !is_key_char(*c)) {
                return Err(de::Error::custom(format!(
                    "selector key {key:?} has the character {c:?}; \
                     keys use letters, digits, \".\", \"_\", \"-\", \"/\""
                )));
            }
            if pairs.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "selector key {key:?} appears more than once"
                )));
            }
            pairs.insert(key, value);
        }
        Ok(Selector::from_pairs(pairs))
    }
}

#[cfg(test)]
mod tests {
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
}
