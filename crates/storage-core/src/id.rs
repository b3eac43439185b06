//! Validated identifiers.
//!
//! Every identifier that the store turns into a path component is a newtype
//! whose only constructor validates it. The rules are the ones in
//! `docs/storage-layout.md`: a value that could escape its directory, hide
//! among our own temp and lock files (leading `.`), exceed a file-name
//! limit, or look like another name (surrounding whitespace, Unicode
//! bidirectional controls that reorder what a listing shows) is *rejected*,
//! never rewritten, so that two distinct inputs can never silently map to
//! one file.

use std::fmt;

/// The longest identifier accepted, in bytes (the usual file-name limit).
pub const MAX_ID_BYTES: usize = 255;

/// Why an identifier was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdProblem {
    /// The value is empty.
    Empty,
    /// The value is `.` or `..`.
    DotName,
    /// The value starts with `.`, which is reserved for the store's temp and lock files.
    LeadingDot,
    /// The value contains `/` or `\`.
    Separator,
    /// The value contains NUL or another control character.
    Control,
    /// The value is longer than [`MAX_ID_BYTES`].
    TooLong,
    /// The value starts or ends with whitespace (`"job-a "` lists as `job-a`).
    SurroundingWhitespace,
    /// The value contains a Unicode bidirectional control (see [`is_bidi_control`]),
    /// which makes a name display in another order than it is.
    BidiControl,
}

/// The Unicode bidirectional formatting characters: U+061C, U+200E, U+200F,
/// U+202A to U+202E and U+2066 to U+2069. Not control characters to
/// [`char::is_control`], but they reorder how a name is shown
/// (`job-\u{202E}gpj.exe` displays as `job-exe.jpg`).
#[must_use]
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdProblem::Empty => "it is empty",
            IdProblem::DotName => "`.` and `..` are not names",
            IdProblem::LeadingDot => "a leading `.` is reserved for the store's own files",
            IdProblem::Separator => "it contains a path separator",
            IdProblem::Control => "it contains NUL or a control character",
            IdProblem::TooLong => "it is longer than 255 bytes",
            IdProblem::SurroundingWhitespace => "it starts or ends with whitespace",
            IdProblem::BidiControl => {
                "it contains a Unicode bidirectional control character (U+202E and the like), which makes it display as another name"
            }
        })
    }
}

/// An identifier that failed validation; names the kind, the value and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {problem}")]
pub struct IdError {
    /// What the value was meant to be (`"job id"`, `"session id"`, ...).
    pub kind: &'static str,
    /// The rejected value, escaped for display by `{:?}`.
    pub value: String,
    /// The rule it broke.
    pub problem: IdProblem,
}

/// Checks the path-component rules shared by every identifier.
pub fn check_component(kind: &'static str, value: &str) -> Result<(), IdError> {
    let problem = if value.is_empty() {
        Some(IdProblem::Empty)
    } else if value == "." || value == ".." {
        Some(IdProblem::DotName)
    } else if value.starts_with('.') {
        Some(IdProblem::LeadingDot)
    } else if value.contains(['/', '\\']) {
        Some(IdProblem::Separator)
    } else if value.chars().any(char::is_control) {
        Some(IdProblem::Control)
    } else if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        Some(IdProblem::SurroundingWhitespace)
    } else if value.chars().any(is_bidi_control) {
        Some(IdProblem::BidiControl)
    } else if value.len() > MAX_ID_BYTES {
        Some(IdProblem::TooLong)
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(IdError {
            kind,
            value: value.to_owned(),
            problem,
        }),
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// What this identifier is called in error messages.
            pub const KIND: &'static str = $kind;

            /// Validates `value`; see the module docs for the rules.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_component($kind, &value)?;
                Ok(Self(value))
            }

            /// The identifier as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// The namespace of one project (repository) in the store, e.g. `prodigy` or `api-3f2a9c01`.
    RepoKey,
    "repository key"
);
identifier!(
    /// A MapReduce job, e.g. `mapreduce-1757146800123` or `mapreduce-20250906_082000`.
    JobId,
    "job id"
);
identifier!(
    /// A session, e.g. `session-6f1c…` or `cook-7`.
    SessionId,
    "session id"
);
identifier!(
    /// A workflow, e.g. `workflow-1757850041656`.
    WorkflowId,
    "workflow id"
);
identifier!(
    /// A dead-lettered work item, e.g. `item_12`.
    ItemId,
    "dead-letter item id"
);
identifier!(
    /// The name of a resume lock (a job or session id, usually).
    LockKey,
    "lock key"
);
identifier!(
    /// A document kind the store does not know by name, for
    /// [`DocKey::Extension`](crate::DocKey::Extension): namespace it
    /// (`prodigy.reduce-checkpoint`) so two consumers never share one.
    ExtKind,
    "document kind"
);
identifier!(
    /// The name of one document of an [`ExtKind`], e.g. `reduce-checkpoint-v3`.
    DocName,
    "document name"
);

#[cfg(test)]
mod tests;
