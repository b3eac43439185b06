/work/main/target-old/release/deps/migrate-feec56a6413f38b0.d: crates/storage-migrate/benches/migrate.rs

/work/main/target-old/release/deps/migrate-feec56a6413f38b0: crates/storage-migrate/benches/migrate.rs

crates/storage-migrate/benches/migrate.rs:
