//! Tests of the PostgreSQL store against a real server (filled in by a later commit).
