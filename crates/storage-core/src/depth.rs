//! How deeply a stored JSON value may nest, and the check every store runs
//! before it writes one.
//!
//! `serde_json`, which every store reads with, stops at 128 nested arrays
//! and objects ("recursion limit exceeded"): it guards its recursive parser
//! against a stack overflow. A store that accepted a deeper value would keep
//! a document `get` cannot return and an event line no strict reader can
//! pass, so a follower would stop at it for good. Every implementation
//! therefore calls [`check_document`] in `put` and [`check_events`] in
//! `append_events`, before it writes anything, and refuses such a value
//! with [`RecordError::TooDeep`]: the writer hears of it, not every reader
//! afterwards.
//!
//! The limit, [`MAX_JSON_DEPTH`], is below what the readers hold: the
//! stores write a value as it is (the file store: a document as its own
//! file, an event as one line; PostgreSQL: the same text in a row), and
//! the margin leaves room for an envelope a store or a tool may put around
//! a value later (an export, an archive format) without a record that was
//! accepted becoming unreadable there.
//!
//! The depth is measured with an explicit stack, never by recursion, so a
//! value of any depth is measured without risk to the thread's stack.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::record::{EventRecord, RecordError};

/// The deepest nesting of arrays and objects a store accepts in a document
/// or an event (see [`json_depth`] for how it is counted). `serde_json`
/// reads up to 127; the margin is for an envelope around a stored value.
pub const MAX_JSON_DEPTH: usize = 100;

/// The depth at which `serde_json`'s readers stop, for messages: a value
/// nested this deep or deeper cannot be read back.
pub const READER_JSON_DEPTH: usize = 128;

/// The nesting depth of `value`: how many arrays and objects lie on the
/// deepest path into it. A string, number, boolean or null is 0, `[]` and
/// `{}` are 1, `{"a": [1]}` is 2. It is what `serde_json` counts: it
/// refuses to read a value of depth [`READER_JSON_DEPTH`] or more.
#[must_use]
pub fn json_depth(value: &Value) -> usize {
    children(value).map_or(0, deepest)
}

/// Refuses a document nested deeper than [`MAX_JSON_DEPTH`]: every store's
/// `put` calls it before writing.
pub fn check_document(doc: &Value) -> Result<()> {
    check("document", json_depth(doc))
}

/// Refuses a batch with an event nested deeper than [`MAX_JSON_DEPTH`]:
/// every store's `append_events` calls it before writing, so a refused
/// batch leaves nothing in the log.
pub fn check_events(events: &[EventRecord]) -> Result<()> {
    for e in events {
        check("event", map_depth(e.json()))?;
    }
    Ok(())
}

fn check(what: &'static str, depth: usize) -> Result<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(RecordError::TooDeep { what, depth }.into());
    }
    Ok(())
}

/// The depth of an object given as its map (an event's payload).
fn map_depth(map: &Map<String, Value>) -> usize {
    deepest(Children::Object(map.values()))
}

/// The children of a container, one at a time.
enum Children<'a> {
    Array(std::slice::Iter<'a, Value>),
    Object(serde_json::map::Values<'a>),
}

impl<'a> Iterator for Children<'a> {
    type Item = &'a Value;

    fn next(&mut self) -> Option<&'a Value> {
        match self {
            Children::Array(it) => it.next(),
            Children::Object(it) => it.next(),
        }
    }
}

fn children(value: &Value) -> Option<Children<'_>> {
    match value {
        Value::Array(a) => Some(Children::Array(a.iter())),
        Value::Object(m) => Some(Children::Object(m.values())),
        _ => None,
    }
}

/// The depth of the container whose children `top` yields: a walk with one
/// iterator per open container, so memory grows with the depth, not with
/// the number of values.
fn deepest(top: Children<'_>) -> usize {
    let mut stack = vec![top];
    let mut max = 1;
    while let Some(open) = stack.last_mut() {
        match open.next() {
            Some(child) => {
                if let Some(c) = children(child) {
                    stack.push(c);
                    max = max.max(stack.len());
                }
            }
            None => {
                stack.pop();
            }
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::Error;

    /// `levels` arrays around `1`, built from text (no recursion here).
    fn nested_text(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_arrays_and_objects_on_the_deepest_path() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!("[[[")), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1]})), 2);
        assert_eq!(json_depth(&json!([1, [2, [3]], {"b": {"c": {}}}])), 4);
        assert_eq!(json_depth(&json!({"x": 1, "y": [[], [[]]], "z": {}})), 4);
    }

    #[test]
    fn the_depth_is_the_one_serde_json_counts() {
        // The reader's limit, measured: the limit's margin rests on it.
        let v: Value = serde_json::from_str(&nested_text(READER_JSON_DEPTH - 1)).expect("readable");
        assert_eq!(json_depth(&v), READER_JSON_DEPTH - 1);
        let err = serde_json::from_str::<Value>(&nested_text(READER_JSON_DEPTH))
            .expect_err("too deep for serde_json");
        assert!(err.to_string().contains("recursion limit"), "{err}");
        const { assert!(MAX_JSON_DEPTH < READER_JSON_DEPTH) };
    }

    #[test]
    fn a_value_deeper_than_the_limit_is_refused_and_one_at_it_accepted() {
        let at: Value = serde_json::from_str(&nested_text(MAX_JSON_DEPTH)).expect("json");
        check_document(&at).expect("at the limit");
        let over: Value = serde_json::from_str(&nested_text(MAX_JSON_DEPTH + 1)).expect("json");
        let err = check_document(&over).expect_err("over the limit");
        assert!(
            matches!(
                err,
                Error::InvalidRecord(RecordError::TooDeep {
                    what: "document",
                    depth
                }) if depth == MAX_JSON_DEPTH + 1
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "a document is nested 101 levels deep, over the 100 levels a store accepts (JSON \
             readers stop at 128); flatten it, or store the deep part as a JSON string"
        );
        let event = |inner: Value| {
            EventRecord::from_json(json!({"id": "e1", "deep": inner})).expect("object")
        };
        let inner: Value = serde_json::from_str(&nested_text(MAX_JSON_DEPTH - 1)).expect("json");
        check_events(&[event(json!(1)), event(inner)]).expect("at the limit");
        let err = check_events(&[event(json!(1)), event(at)]).expect_err("over");
        assert!(
            err.to_string().starts_with("an event is nested 101"),
            "{err}"
        );
    }
}
