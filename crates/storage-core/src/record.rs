//! Records: typed views over JSON payloads that are kept whole.
//!
//! Prodigy's formats keep changing and files written by older versions lack
//! fields that today's code requires (see `docs/storage-layout.md`). A record
//! therefore *is* its JSON object: the store validates only the identifier
//! field it files the record under, exposes a few typed accessors, and writes
//! the object back exactly as it was given, unknown and missing fields
//! included. Nothing is lost by a load/save round trip through this crate.

use serde_json::{Map, Value};

use crate::id::{IdError, ItemId, JobId, SessionId, WorkflowId};

/// A JSON payload that cannot be filed as the record it claims to be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The payload is not a JSON object.
    #[error("a {record} must be a JSON object")]
    NotAnObject {
        /// The record type.
        record: &'static str,
    },
    /// The identifying field is missing or not a string.
    #[error("a {record} needs a string field `{field}`")]
    MissingField {
        /// The record type.
        record: &'static str,
        /// The field that names the record.
        field: &'static str,
    },
    /// The identifying field holds an invalid identifier.
    #[error("a {record} has an invalid `{field}`")]
    InvalidId {
        /// The record type.
        record: &'static str,
        /// The field that names the record.
        field: &'static str,
        /// Why the identifier was rejected.
        #[source]
        source: IdError,
    },
    /// The payload nests arrays and objects deeper than a store accepts
    /// ([`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH)), close to where JSON
    /// readers stop: refused before anything is written, so that no store
    /// holds what it cannot give back.
    #[error(
        "{} {what} is nested {depth} levels deep, over the {max} levels a store accepts \
         (JSON readers stop at {readers}); flatten it, or store the deep part as a JSON string",
        article(.what),
        max = crate::depth::MAX_JSON_DEPTH,
        readers = crate::depth::READER_JSON_DEPTH
    )]
    TooDeep {
        /// What was refused: `"document"` or `"event"`.
        what: &'static str,
        /// How deep it nests (see [`json_depth`](crate::json_depth)).
        depth: usize,
    },
}

/// `a` or `an`, for a noun in a message.
fn article(noun: &str) -> &'static str {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn object(record: &'static str, value: Value) -> Result<Map<String, Value>, RecordError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(RecordError::NotAnObject { record }),
    }
}

fn id_field<'a>(
    record: &'static str,
    map: &'a Map<String, Value>,
    path: &[&'static str],
) -> Result<&'a str, RecordError> {
    let field = *path.last().expect("an id path has at least one field");
    let mut cursor = map;
    for (i, key) in path.iter().enumerate() {
        let value = cursor.get(*key);
        if i + 1 == path.len() {
            return value
                .and_then(Value::as_str)
                .ok_or(RecordError::MissingField { record, field });
        }
        cursor = value
            .and_then(Value::as_object)
            .ok_or(RecordError::MissingField { record, field })?;
    }
    Err(RecordError::MissingField { record, field })
}

macro_rules! record {
    ($(#[$doc:meta])* $name:ident, $label:literal, $id:ident, $id_method:ident, [$($field:literal),+]) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            id: $id,
            json: Map<String, Value>,
        }

        impl $name {
            /// What this record is called in messages.
            pub const LABEL: &'static str = $label;

            /// Files `value` as this record; only the identifying field is checked.
            pub fn from_json(value: Value) -> Result<Self, RecordError> {
                let json = object($label, value)?;
                let path = [$($field),+];
                let raw = id_field($label, &json, &path)?;
                let id = $id::new(raw).map_err(|source| RecordError::InvalidId {
                    record: $label,
                    field: *path.last().expect("non-empty"),
                    source,
                })?;
                Ok(Self { id, json })
            }

            /// The identifier the record is filed under.
            #[must_use]
            pub fn $id_method(&self) -> &$id {
                &self.id
            }

            /// The whole payload, unknown fields included.
            #[must_use]
            pub fn json(&self) -> &Map<String, Value> {
                &self.json
            }

            /// The whole payload as a JSON value.
            #[must_use]
            pub fn into_json(self) -> Value {
                Value::Object(self.json)
            }

            /// A top-level string field, if present.
            #[must_use]
            pub fn str_field(&self, field: &str) -> Option<&str> {
                self.json.get(field).and_then(Value::as_str)
            }
        }
    };
}

record!(
    /// A session (`SessionState` in Prodigy): `session_id`, `status`, `started_at`, ...
    SessionRecord,
    "session",
    SessionId,
    session_id,
    ["session_id"]
);

impl SessionRecord {
    /// `status`: `InProgress`, `Completed`, `Failed` or `Interrupted` (not validated).
    #[must_use]
    pub fn status(&self) -> Option<&str> {
        self.str_field("status")
    }
}

record!(
    /// A unified session (`UnifiedSession` in Prodigy): global, keyed by `id`;
    /// `session_type` (`Workflow` or `MapReduce`), `status`, `started_at`,
    /// `updated_at`, `completed_at`, `metadata`, `checkpoints`, `timings`,
    /// `error`, `workflow_data`, `mapreduce_data`.
    UnifiedSession,
    "unified session",
    SessionId,
    id,
    ["id"]
);

impl UnifiedSession {
    /// `status` (`Initializing`, `Running`, `Paused`, `Completed`, `Failed`, …; not validated).
    #[must_use]
    pub fn status(&self) -> Option<&str> {
        self.str_field("status")
    }

    /// `session_type`: `Workflow` or `MapReduce` (not validated).
    #[must_use]
    pub fn session_type(&self) -> Option<&str> {
        self.str_field("session_type")
    }
}

record!(
    /// One version of a MapReduce job's state (`checkpoint-v<N>.json`).
    JobCheckpoint,
    "job checkpoint",
    JobId,
    job_id,
    ["job_id"]
);

impl JobCheckpoint {
    /// `checkpoint_version`, if present and a non-negative integer.
    #[must_use]
    pub fn checkpoint_version(&self) -> Option<u64> {
        self.json.get("checkpoint_version").and_then(Value::as_u64)
    }
}

record!(
    /// A workflow checkpoint (`<workflow-id>.checkpoint.json`).
    WorkflowCheckpoint,
    "workflow checkpoint",
    WorkflowId,
    workflow_id,
    ["workflow_id"]
);

record!(
    /// A dead-lettered work item: `item_id`, `item_data`, `failure_history`, ...
    DeadLetterItem,
    "dead-letter item",
    ItemId,
    item_id,
    ["item_id"]
);

record!(
    /// Which MapReduce job a session runs: `session_id`, `job_id`, ...
    SessionJobMapping,
    "session-to-job mapping",
    SessionId,
    session_id,
    ["session_id"]
);

impl SessionJobMapping {
    /// The job the session maps to, if the payload names a valid one.
    #[must_use]
    pub fn job_id(&self) -> Option<JobId> {
        self.str_field("job_id").and_then(|s| JobId::new(s).ok())
    }
}

/// One line of a job's event log: `id`, `timestamp`, `event` {`event_type`, `job_id`, ...}, `metadata`.
///
/// Events are never rejected for their content: any JSON object is a valid
/// event, and [`EventRecord::job_id`] reads `event.job_id` when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRecord {
    json: Map<String, Value>,
}

impl EventRecord {
    /// What this record is called in messages.
    pub const LABEL: &'static str = "event";

    /// Wraps a JSON object as an event.
    pub fn from_json(value: Value) -> Result<Self, RecordError> {
        Ok(Self {
            json: object(Self::LABEL, value)?,
        })
    }

    /// `event.job_id`, when present and a valid job id.
    #[must_use]
    pub fn job_id(&self) -> Option<JobId> {
        id_field(Self::LABEL, &self.json, &["event", "job_id"])
            .ok()
            .and_then(|s| JobId::new(s).ok())
    }

    /// `timestamp`, when present and an RFC 3339 time (see [`parse_rfc3339`](crate::parse_rfc3339)).
    #[must_use]
    pub fn timestamp(&self) -> Option<std::time::SystemTime> {
        self.json
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(crate::time::parse_rfc3339)
    }

    /// `event.event_type`, e.g. `agent_completed` or `d_l_q_item_added`.
    #[must_use]
    pub fn event_type(&self) -> Option<&str> {
        id_field(Self::LABEL, &self.json, &["event", "event_type"]).ok()
    }

    /// The whole payload.
    #[must_use]
    pub fn json(&self) -> &Map<String, Value> {
        &self.json
    }

    /// The whole payload as a JSON value.
    #[must_use]
    pub fn into_json(self) -> Value {
        Value::Object(self.json)
    }
}

/// Who holds a resume lock: written for messages only, never trusted as the lock.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockHolder {
    /// The job or session the lock guards (Prodigy's `job_id` field).
    pub job_id: String,
    /// The holder's process id.
    pub process_id: u32,
    /// The holder's host name.
    pub hostname: String,
    /// When it was acquired, RFC 3339.
    pub acquired_at: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} on {} since {}",
            self.process_id, self.hostname, self.acquired_at
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_and_missing_fields_survive_a_round_trip() {
        let old = json!({
            "session_id": "session-1",
            "status": "InProgress",
            "a_field_from_the_future": {"nested": [1, 2, 3]},
            "zzz_first_in_file_order": true
        });
        let rec = SessionRecord::from_json(old.clone()).expect("valid");
        assert_eq!(rec.status(), Some("InProgress"));
        assert_eq!(rec.into_json(), old);
    }

    #[test]
    fn records_name_the_field_that_is_missing_or_invalid() {
        let err = JobCheckpoint::from_json(json!({"config": {}})).expect_err("no job_id");
        assert_eq!(
            err.to_string(),
            "a job checkpoint needs a string field `job_id`"
        );
        let err = DeadLetterItem::from_json(json!({"item_id": "../x"})).expect_err("bad id");
        assert_eq!(
            err.to_string(),
            "a dead-letter item has an invalid `item_id`"
        );
        let err = WorkflowCheckpoint::from_json(json!([1])).expect_err("array");
        assert_eq!(
            err.to_string(),
            "a workflow checkpoint must be a JSON object"
        );
    }

    #[test]
    fn events_without_a_job_are_still_events() {
        let e = EventRecord::from_json(json!({"id": "e1", "event": {"event_type": "x"}}))
            .expect("object");
        assert_eq!(e.job_id(), None);
        assert_eq!(e.event_type(), Some("x"));
        let e =
            EventRecord::from_json(json!({"event": {"job_id": "mapreduce-1"}})).expect("object");
        assert_eq!(
            e.job_id().map(|j| j.to_string()).as_deref(),
            Some("mapreduce-1")
        );
    }
}
