//! YAML read safely: what comes from agents (effective configs) and admins (configs) is checked
//! before a tree is built, since building, walking and dropping a tree recurse once per level of
//! nesting, and an alias can stand for a copy of everything its anchor holds. Pure.

use saphyr_parser::{Event, Parser};
use serde_json::{Value, json};

/// The deepest nesting of mappings and sequences read; collector configs use fewer than ten.
pub const MAX_DEPTH: usize = 64;

/// Checks `body` before it is loaded: nested at most [`MAX_DEPTH`] levels and, unless
/// `aliases`, without aliases (`*name`). Err says what and where (1-based line); a syntax error
/// is left for the loader to report.
pub fn check(body: &str, aliases: bool) -> Result<(), String> {
    let mut depth = 0usize;
    for event in Parser::new_from_str(body) {
        let Ok((event, span)) = event else {
            return Ok(());
        };
        match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "nested deeper than {MAX_DEPTH} levels (line {})",
                        span.start.line()
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Alias(_) if !aliases => {
                return Err(format!(
                    "uses an alias (line {}), which is not read here",
                    span.start.line()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A YAML document as JSON (aliases and unreadable values as null; keys as text). Recursive:
/// load only what [`check`] passed.
pub fn to_json(y: &saphyr::Yaml) -> Value {
    use saphyr::{Scalar, Yaml};
    match y {
        Yaml::Value(Scalar::Null) | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => json!(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => to_json(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_and_aliases_are_refused_before_loading() {
        assert_eq!(check("a: {b: [1, 2]}\n", false), Ok(()));
        let deep = format!("{}x", "- ".repeat(100_000));
        let err = check(&deep, true).unwrap_err();
        assert!(
            err.contains("nested deeper than 64 levels (line 1)"),
            "{err}"
        );
        let flow = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check(&flow, true).is_err());
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check(&ok, true), Ok(()));
        let laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert!(check(laughs, false).unwrap_err().contains("alias (line 2)"));
        assert_eq!(check(laughs, true), Ok(()));
        assert_eq!(check("a: [unclosed", false), Ok(()), "left to the loader");
    }
}
