//! Identifier validation: real ids pass, hostile ones fail with their rule.

use super::*;

#[test]
fn real_prodigy_identifiers_are_accepted() {
    for ok in [
        "session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10",
        "cook-7",
        "mapreduce-1757146800123",
        "mapreduce-20250906_082000",
        "workflow-1757850041656",
        "item_12",
        "agent_3",
        "ünïcødé-名前",
        "a.b",
        "trailing.",
    ] {
        JobId::new(ok).expect(ok);
    }
    JobId::new("x".repeat(255)).expect("255 bytes is the limit, inclusive");
}

#[test]
fn hostile_identifiers_are_rejected_with_the_rule_they_break() {
    let cases: &[(&str, IdProblem)] = &[
        ("", IdProblem::Empty),
        (".", IdProblem::DotName),
        ("..", IdProblem::DotName),
        (".hidden", IdProblem::LeadingDot),
        (".tmp-123", IdProblem::LeadingDot),
        ("a/b", IdProblem::Separator),
        ("../etc", IdProblem::LeadingDot),
        ("x/../../etc", IdProblem::Separator),
        ("/abs", IdProblem::Separator),
        ("a\\b", IdProblem::Separator),
        ("nul\0byte", IdProblem::Control),
        ("new\nline", IdProblem::Control),
        ("tab\there", IdProblem::Control),
        ("del\u{7f}", IdProblem::Control),
        (" ", IdProblem::SurroundingWhitespace),
        ("job-a ", IdProblem::SurroundingWhitespace),
        (" job-a", IdProblem::SurroundingWhitespace),
        ("job-a\u{a0}", IdProblem::SurroundingWhitespace),
        ("job-\u{202e}gpj.exe", IdProblem::BidiControl),
        ("a\u{2066}b", IdProblem::BidiControl),
        ("a\u{200f}", IdProblem::BidiControl),
    ];
    for (value, problem) in cases {
        let err = SessionId::new(*value).expect_err(value);
        assert_eq!(err.problem, *problem, "{value:?}");
        assert_eq!(err.value, *value);
        assert_eq!(err.kind, "session id");
    }
    let long = "é".repeat(128); // 256 bytes
    assert_eq!(
        ItemId::new(long).expect_err("too long").problem,
        IdProblem::TooLong
    );
}

#[test]
fn error_message_names_kind_value_and_rule() {
    let err = JobId::new("a/b").expect_err("separator");
    assert_eq!(
        err.to_string(),
        r#"invalid job id "a/b": it contains a path separator"#
    );
}

#[test]
fn whitespace_and_bidi_errors_name_the_rule() {
    assert_eq!(
        JobId::new("job-a ")
            .expect_err("trailing space")
            .to_string(),
        r#"invalid job id "job-a ": it starts or ends with whitespace"#
    );
    let err = JobId::new("job-\u{202e}x").expect_err("bidi").to_string();
    assert!(err.contains("Unicode bidirectional control"), "{err}");
    assert!(
        err.contains("\\u{202e}"),
        "the value is shown escaped: {err}"
    );
    JobId::new("inner space ok").expect("whitespace inside is fine");
}

#[test]
fn deserializing_validates() {
    let ok: JobId = serde_json::from_str(r#""mapreduce-1""#).expect("valid");
    assert_eq!(ok.as_str(), "mapreduce-1");
    assert!(serde_json::from_str::<JobId>(r#""..""#).is_err());
}
