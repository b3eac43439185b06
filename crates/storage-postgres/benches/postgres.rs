//! Benchmarks of the PostgreSQL store (filled in by a later commit).

fn main() {}
