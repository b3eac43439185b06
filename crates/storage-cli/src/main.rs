//! `prodigy-storage`.
fn main() {}
