//! Hides secrets in the effective configs that agents report, before the admin API shows them.
//!
//! An agent reports its config as text after expanding environment variables, so passwords and
//! tokens that the pushed config only referenced can appear in the clear. [`Redactor::redact`]
//! works line by line on YAML and JSON text rather than parsing it: the output keeps the agent's
//! formatting, comments and line numbers (so it can be read next to the agent's own logs), and a
//! body that does not parse is still redacted. The rules:
//!
//! - A line `key: value`, `- key: value` or `"key": "value",` whose key matches one of the
//!   patterns (a regex searched case-insensitively in the key name) gets its value replaced by
//!   `<redacted>`; quotes, a trailing comma and a trailing `# comment` are kept. A flow mapping or
//!   list written on that same line is replaced whole.
//! - If the value is a block scalar (`key: |`, `key: >-`), its more-indented lines become one
//!   `<redacted>` line at their indent; more-indented lines after an inline value (a multi-line
//!   scalar) are dropped.
//! - If nothing follows the colon (or only `{` or `[` in JSON), children follow. They are not
//!   blanked wholesale: each child line is checked by these same rules, so under `credentials:` the
//!   `password:` is hidden and `username:` is not. List items without a key of their own
//!   (`- abc`, `"abc",`) take their nearest parent key's verdict, so the items under `api_keys:`
//!   are hidden.
//! - Pairs inside a flow mapping or minified JSON (`{user: a, password: b}`,
//!   `{"token":"x"}`) are checked too.
//! - Credentials in URLs anywhere, `scheme://user:password@host`, become
//!   `scheme://user:<redacted>@host`.
//!
//! Patterns are searched anywhere in the key, so a key that merely contains a pattern word
//! (`token_file`, `secret_name`, `authorization_endpoint`) is redacted too: hiding a harmless value
//! costs a reader a little, showing a secret costs much more. What is missed: secrets in values of
//! keys that do not name them (a header list written as `- name: Authorization` /
//! `value: ...`), and in free text such as shell lines inside a block scalar.

use regex::{Captures, Regex, RegexSet, RegexSetBuilder};
use std::sync::LazyLock;

const REDACTED: &str = "<redacted>";

/// `key:` at the start of a line, after indentation and sequence dashes. A plain key runs to the
/// first colon followed by a blank (YAML's rule, so `http://x` is not a key); a quoted key may be
/// followed directly by its value, as in compact JSON.
static KEY_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"^(?P<lead>[ \t]*(?:-[ \t]+)*)"#,
        r#"(?:(?P<qkey>"(?:[^"\\]|\\.)*"|'(?:[^']|'')*')[ \t]*:(?P<qrest>.*)"#,
        r#"|(?P<pkey>[^ \t#"'{}\[\],&*!|>%@`](?:[^#:]|:[^ \t])*?)[ \t]*:(?P<prest>(?:[ \t].*)?))$"#,
    ))
    .expect("valid regex")
});

/// A block scalar header: `|` or `>`, optional chomping and indentation indicators, a comment.
static BLOCK_HEADER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[|>][0-9+\-]*[ \t]*(?:#.*)?$").expect("valid regex"));

/// A `key: value` pair inside a flow mapping or JSON object, found anywhere on a line.
static FLOW_PAIR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r#"(?P<pre>[{,][ \t]*)"#,
        r#"(?P<key>"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[A-Za-z0-9_.\-/]+)"#,
        r#"(?P<sep>[ \t]*:[ \t]*)"#,
        r#"(?P<val>"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^ \t,{}\[\]"'][^,{}\[\]]*)"#,
    ))
    .expect("valid regex")
});

/// Userinfo with a password in a URL. The password runs to the last `@` before the host, so an
/// unescaped `@` inside it is hidden too.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@"'<>]*):[^\s/"'<>]+@"#)
        .expect("valid regex")
});

/// Indentation and sequence dashes before a list item's value.
static ITEM_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[ \t]*(?:-[ \t]+)*").expect("valid regex"));

/// Redacts secrets from config text; see the module docs for the rules.
#[derive(Clone, Debug)]
pub struct Redactor {
    keys: RegexSet,
}

impl Redactor {
    /// A redactor for keys matching any of `patterns` (regexes, case-insensitive, unanchored).
    pub fn new(patterns: &[String]) -> Result<Self, regex::Error> {
        let keys = RegexSetBuilder::new(patterns)
            .case_insensitive(true)
            .build()?;
        Ok(Self { keys })
    }

    /// Key patterns for the usual secrets. `secret` also covers `client_secret`, and
    /// `credential` covers `credentials`.
    pub fn default_patterns() -> Vec<String> {
        [
            "passw(or)?d",
            "passphrase",
            "secret",
            "token",
            "api[-_]?key",
            "authorization",
            "credential",
            "private[-_]?key",
            "bearer",
            "access[-_]?key",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    fn is_secret(&self, key: &str) -> bool {
        self.keys.is_match(unquote(key))
    }

    /// `body` with secret values replaced by `<redacted>`, formatting otherwise unchanged.
    pub fn redact(&self, body: &str) -> String {
        let lines: Vec<&str> = body.split('\n').collect();
        let mut out: Vec<String> = Vec::with_capacity(lines.len());
        // Keys whose children follow on the next lines, innermost last.
        let mut open: Vec<Parent> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let (text, cr) = split_cr(lines[i]);
            i += 1;
            let trimmed = text.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                out.push(finish(text.to_owned(), cr));
                continue;
            }
            let indent = text.len() - trimmed.len();
            let is_item = trimmed == "-" || trimmed.starts_with("- ") || trimmed.starts_with("-\t");
            while open.last().is_some_and(|p| p.encloses(indent, is_item)) {
                open.pop();
            }
            let line = match key_line(text) {
                Some(kl) => {
                    let secret = self.is_secret(kl.key);
                    match classify(kl.rest) {
                        Value::Children { yaml } => {
                            open.push(Parent {
                                column: kl.column,
                                secret,
                                yaml,
                            });
                            text.to_owned()
                        }
                        Value::Block if secret => {
                            out.push(finish(text.to_owned(), cr));
                            if let Some((first, last)) = more_indented(&lines, i, kl.column) {
                                let (first, cr) = split_cr(lines[first]);
                                let ws = &first[..first.len() - first.trim_start().len()];
                                out.push(finish(format!("{ws}{REDACTED}"), cr));
                                i = last + 1;
                            }
                            continue;
                        }
                        Value::Block => {
                            // The content is judged line by line; a parent entry keeps its
                            // keyless lines from inheriting a secret grandparent's verdict.
                            open.push(Parent {
                                column: kl.column,
                                secret: false,
                                yaml: true,
                            });
                            text.to_owned()
                        }
                        Value::Inline if secret => {
                            if let Some((_, last)) = more_indented(&lines, i, kl.column) {
                                i = last + 1;
                            }
                            let ws = kl.rest.len() - kl.rest.trim_start().len();
                            format!(
                                "{}{}{}",
                                kl.head,
                                &kl.rest[..ws],
                                redact_scalar(&kl.rest[ws..])
                            )
                        }
                        Value::Inline => self.redact_flow_pairs(text),
                    }
                }
                None if open.last().is_some_and(|p| p.secret) => {
                    redact_item(text).unwrap_or_else(|| self.redact_flow_pairs(text))
                }
                None => self.redact_flow_pairs(text),
            };
            out.push(finish(line, cr));
        }
        out.join("\n")
    }

    fn redact_flow_pairs(&self, line: &str) -> String {
        FLOW_PAIR
            .replace_all(line, |c: &Captures<'_>| {
                if self.is_secret(&c["key"]) {
                    format!(
                        "{}{}{}{}",
                        &c["pre"],
                        &c["key"],
                        &c["sep"],
                        redact_flow_value(&c["val"])
                    )
                } else {
                    c[0].to_owned()
                }
            })
            .into_owned()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&Self::default_patterns()).expect("the default patterns are valid regexes")
    }
}

/// A key whose children follow on the next lines.
struct Parent {
    /// Where the key starts; its children are indented further.
    column: usize,
    secret: bool,
    /// YAML, where a list may sit at its key's own indent (`key:` then `- item` below `k`).
    yaml: bool,
}

impl Parent {
    /// Whether a line at `indent` has left this parent.
    fn encloses(&self, indent: usize, is_item: bool) -> bool {
        indent < self.column || (indent == self.column && !(is_item && self.yaml))
    }
}

enum Value {
    /// Nothing after the colon (YAML) or an opening `{`/`[` (JSON): children follow.
    Children {
        yaml: bool,
    },
    Block,
    Inline,
}

fn classify(rest: &str) -> Value {
    let v = rest.trim();
    if v.is_empty() || v.starts_with('#') {
        Value::Children { yaml: true }
    } else if v == "{" || v == "[" {
        Value::Children { yaml: false }
    } else if BLOCK_HEADER.is_match(v) {
        Value::Block
    } else {
        Value::Inline
    }
}

struct KeyLine<'a> {
    /// Byte offset of the key: indentation plus any `- `.
    column: usize,
    key: &'a str,
    /// The line up to and including the colon.
    head: &'a str,
    rest: &'a str,
}

fn key_line(line: &str) -> Option<KeyLine<'_>> {
    let c = KEY_LINE.captures(line)?;
    let (key, rest) = match (c.name("qkey"), c.name("pkey")) {
        (Some(key), _) => (key, c.name("qrest")?),
        (None, Some(key)) => (key, c.name("prest")?),
        (None, None) => return None,
    };
    Some(KeyLine {
        column: c.name("lead").map_or(0, |m| m.end()),
        key: key.as_str().trim_end(),
        head: &line[..rest.start()],
        rest: rest.as_str(),
    })
}

/// The first and last non-blank line of the run, starting at `start`, of lines indented beyond
/// `column` (blank lines inside the run belong to it; trailing ones do not).
fn more_indented(lines: &[&str], start: usize, column: usize) -> Option<(usize, usize)> {
    let mut run: Option<(usize, usize)> = None;
    for (j, line) in lines.iter().enumerate().skip(start) {
        let (text, _) = split_cr(line);
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if text.len() - trimmed.len() <= column {
            break;
        }
        run = Some((run.map_or(j, |(first, _)| first), j));
    }
    run
}

/// A keyless list item under a secret key: `- abc`, `- "abc"` or JSON's `"abc",`.
fn redact_item(line: &str) -> Option<String> {
    let prefix = ITEM_PREFIX.find(line).map_or(0, |m| m.end());
    let value = line[prefix..].trim_start();
    let prefix = &line[..line.len() - value.len()];
    if value == "-" {
        // A nested list opens on the next line; its items are judged there.
        return None;
    }
    match value.chars().next() {
        None | Some('{' | '}' | '[' | ']' | '#' | '|' | '>' | '&' | '*' | '!') => None,
        Some(_) => Some(format!("{prefix}{}", redact_scalar(value))),
    }
}

/// Replaces a scalar that starts `value`, keeping its quotes and what follows it (a comment, a
/// JSON comma).
fn redact_scalar(value: &str) -> String {
    match value.chars().next() {
        Some(q @ ('"' | '\'')) => match closing_quote(value, q) {
            Some(end) => format!("{q}{REDACTED}{q}{}", &value[end + 1..]),
            // Continues on the next lines, which the caller drops.
            None => format!("{q}{REDACTED}{q}"),
        },
        _ => {
            let comment = [" #", "\t#"]
                .iter()
                .filter_map(|c| value.find(c))
                .min()
                .unwrap_or(value.len());
            let (core, comment) = value.split_at(comment);
            let kept = core.trim_end();
            let kept = kept.strip_suffix(',').unwrap_or(kept);
            format!("{REDACTED}{}{comment}", &core[kept.len()..])
        }
    }
}

/// A value inside a flow mapping: quoted keeps its quotes, plain keeps trailing blanks.
fn redact_flow_value(value: &str) -> String {
    match value.chars().next() {
        Some(q @ ('"' | '\'')) => format!("{q}{REDACTED}{q}"),
        _ => format!("{REDACTED}{}", &value[value.trim_end().len()..]),
    }
}

/// Byte index of the quote closing the string that opens `value`, honouring `\"` in double
/// quotes and `''` in single quotes.
fn closing_quote(value: &str, quote: char) -> Option<usize> {
    let mut chars = value.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                chars.next();
            }
            c if c == quote => {
                if quote == '\'' && chars.peek().is_some_and(|&(_, n)| n == '\'') {
                    chars.next();
                } else {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn unquote(key: &str) -> &str {
    let key = key.trim();
    for q in ['"', '\''] {
        if let Some(inner) = key.strip_prefix(q).and_then(|k| k.strip_suffix(q)) {
            return inner;
        }
    }
    key
}

/// A line without its `\r`, so CRLF text keeps its line endings.
fn split_cr(line: &str) -> (&str, bool) {
    match line.strip_suffix('\r') {
        Some(text) => (text, true),
        None => (line, false),
    }
}

/// The URL rule applies to every line, whatever else matched, comments included.
fn finish(line: String, cr: bool) -> String {
    let mut line = URL_PASSWORD
        .replace_all(&line, "${scheme}${user}:<redacted>@")
        .into_owned();
    if cr {
        line.push('\r');
    }
    line
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
