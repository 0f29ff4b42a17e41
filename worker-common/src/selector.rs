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
use std::borrow::Cow;
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
    pub fn matches<A: Attributes + ?Sized>(&self, attrs: &A) -> bool {
        self.terms
            .iter()
            .all(|t| t.matches(attrs.attribute(&t.key).as_deref()))
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

/// What a selector looks an agent's attributes up in: a map of them, or a view of an agent's
/// record that reads them in place (no copy per agent on fleet-wide passes).
pub trait Attributes {
    fn attribute(&self, key: &str) -> Option<Cow<'_, str>>;
}

impl Attributes for BTreeMap<String, String> {
    fn attribute(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).map(|v| Cow::Borrowed(v.as_str()))
    }
}

impl Term {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Eq(want), Some(v)) => v == want,
            (Op::NotEq(want), v) => v != Some(want.as_str()),
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
#[path = "selector_tests.rs"]
mod tests;
