//! Pieces every page draws: status words with their mark, highlighted config files, side-by-side
//! diffs, links with query strings. State is always written out in words; colour only repeats it.

use maud::{Markup, html};
use similar::{ChangeTag, TextDiff};

/// A status word in a badge whose class (and so colour) follows the word.
pub fn badge(word: &str) -> Markup {
    let class = match word {
        "connected" | "healthy" | "applied" | "completed" | "running" | "sending" => "ok",
        "silent" | "applying" | "pending" | "paused" | "near_full" => "warn",
        "unhealthy" | "failed" | "rolled_back" | "aborted" | "drifted" | "failing" => "bad",
        _ => "muted",
    };
    html! { span class={ "badge " (class) } { (word.replace('_', " ")) } }
}

/// What an agent said of its health, in words.
pub fn health_word(healthy: Option<bool>) -> &'static str {
    match healthy {
        Some(true) => "healthy",
        Some(false) => "unhealthy",
        None => "unknown",
    }
}

/// A link to `path` with `pairs` as its query (empty values left out).
pub fn href(path: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// A path segment (a config name, a uid) made safe for a URL.
pub fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A config file with line numbers and its YAML (or JSON) keys, comments, strings and numbers
/// marked. A display aid, line by line, not a parser: what it cannot place stays plain text.
pub fn code(name: &str, body: &str) -> Markup {
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
    html! {
        figure.code {
            figcaption { code { (name) } }
            pre {
                @for (i, line) in body.lines().enumerate() {
                    span.line {
                        span.ln aria-hidden="true" { (i + 1) }
                        @if yaml { (highlight_line(line)) } @else { (line) }
                    }
                    "\n"
                }
            }
        }
    }
}

fn highlight_line(line: &str) -> Markup {
    let (text, comment) = split_comment(line);
    let (key, rest) = split_key(text);
    html! {
        @if let Some((indent, key)) = key {
            (indent) span.hk { (key) } ":"
        }
        (value(rest))
        @if !comment.is_empty() { span.hc { (comment) } }
    }
}

/// `# ...` outside quotes, at the start or after a space.
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote = None;
    let mut prev = ' ';
    for (i, ch) in line.char_indices() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return (&line[..i], &line[i..]),
            _ => {}
        }
        prev = ch;
    }
    (line, "")
}

/// `  key:` (or `- key:`, `"key":`) at the start of a line: (indent, key) and what follows.
fn split_key(text: &str) -> (Option<(&str, &str)>, &str) {
    let body = text.trim_start_matches([' ', '-']);
    let indent = &text[..text.len() - body.len()];
    let colon = body
        .find(": ")
        .or_else(|| body.ends_with(':').then(|| body.len() - 1));
    match colon {
        Some(i) if i > 0 && !body[..i].contains(['{', '[', ',']) => {
            (Some((indent, &body[..i])), &body[i + 1..])
        }
        _ => (None, text),
    }
}

fn value(v: &str) -> Markup {
    let t = v.trim();
    let class = if t.starts_with(['"', '\'']) {
        Some("hs")
    } else if t.parse::<f64>().is_ok() || matches!(t, "true" | "false" | "null" | "~") {
        Some("hn")
    } else {
        None
    };
    match class {
        Some(c) if !t.is_empty() => html! { span class=(c) { (v) } },
        _ => html! { (v) },
    }
}

/// Old and new text side by side, changed lines marked (with a sign, not only a colour), long
/// unchanged stretches folded to three lines of context.
pub fn side_by_side(old_title: &str, old: &str, new_title: &str, new: &str) -> Markup {
    let diff = TextDiff::from_lines(old, new);
    let groups = diff.grouped_ops(3);
    html! {
        @if groups.is_empty() {
            p.muted { "No differences." }
        } @else {
            table.diff {
                colgroup { col.ln; col; col.ln; col; }
                thead { tr { th colspan="2" scope="col" { (old_title) } th colspan="2" scope="col" { (new_title) } } }
                tbody {
                    @for (g, group) in groups.iter().enumerate() {
                        @if g > 0 { tr.fold { td colspan="4" { "⋯" } } }
                        @for op in group {
                            @for row in rows(&diff, op) { (row) }
                        }
                    }
                }
            }
        }
    }
}

/// One op as rows: equal lines on both sides, deletions beside insertions.
fn rows<'a>(diff: &TextDiff<'a, 'a, 'a, str>, op: &similar::DiffOp) -> Vec<Markup> {
    let mut left = Vec::new();
    let mut right = Vec::new();
    let mut out = Vec::new();
    let flush = |left: &mut Vec<(usize, String)>,
                 right: &mut Vec<(usize, String)>,
                 out: &mut Vec<Markup>| {
        for i in 0..left.len().max(right.len()) {
            let cell = |side: &Vec<(usize, String)>, sign: &str, class: &str| match side.get(i) {
                Some((n, text)) => html! {
                    td.ln { (n + 1) }
                    td class=(class) { span.sign aria-hidden="true" { (sign) } (text) }
                },
                None => html! { td.ln {} td.empty {} },
            };
            out.push(html! { tr { (cell(left, "−", "del")) (cell(right, "+", "ins")) } });
        }
        left.clear();
        right.clear();
    };
    for change in diff.iter_changes(op) {
        let text = change.value().trim_end_matches('\n').to_owned();
        match change.tag() {
            ChangeTag::Delete => left.push((change.old_index().unwrap_or(0), text)),
            ChangeTag::Insert => right.push((change.new_index().unwrap_or(0), text)),
            ChangeTag::Equal => {
                flush(&mut left, &mut right, &mut out);
                let (o, n) = (
                    change.old_index().unwrap_or(0),
                    change.new_index().unwrap_or(0),
                );
                out.push(html! {
                    tr { td.ln { (o + 1) } td.eq { (text) } td.ln { (n + 1) } td.eq { (text) } }
                });
            }
        }
    }
    flush(&mut left, &mut right, &mut out);
    out
}

/// A count with its noun, singular or plural.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_comments_and_values_are_marked_and_escaped() {
        let html = code(
            "c.yaml",
            "receivers:\n  otlp: {} # on\n  name: \"<x>\"\n  n: 5\n",
        )
        .0;
        assert!(
            html.contains(r#"<span class="hk">receivers</span>:"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="hc"># on</span>"#), "{html}");
        assert!(
            html.contains(r#"<span class="hs"> &quot;&lt;x&gt;&quot;</span>"#),
            "{html}"
        );
        assert!(html.contains(r#"<span class="hn"> 5</span>"#), "{html}");
        // A # inside quotes is no comment.
        assert_eq!(split_comment("a: \"x # y\""), ("a: \"x # y\"", ""));
    }

    #[test]
    fn a_diff_shows_changed_lines_side_by_side_and_folds_the_rest() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 10\n", "line ten\n");
        let html = side_by_side("v1", &old, "v2", &new).0;
        assert!(
            html.contains("line 10") && html.contains("line ten"),
            "{html}"
        );
        assert!(!html.contains(">line 1<"), "far context is folded: {html}");
        assert!(html.contains(r#"class="del""#) && html.contains(r#"class="ins""#));
        assert!(
            side_by_side("a", "x\n", "b", "x\n")
                .0
                .contains("No differences")
        );
    }

    #[test]
    fn links_encode_their_query_and_segments() {
        assert_eq!(
            href("/agents", &[("selector", "env in (a,b)"), ("status", "")]),
            "/agents?selector=env+in+%28a%2Cb%29"
        );
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
