/work/main/target-old/release/deps/storage_tests-f0e1565e4af0edb5.d: tests/src/lib.rs tests/src/fixture.rs

/work/main/target-old/release/deps/libstorage_tests-f0e1565e4af0edb5.rlib: tests/src/lib.rs tests/src/fixture.rs

/work/main/target-old/release/deps/libstorage_tests-f0e1565e4af0edb5.rmeta: tests/src/lib.rs tests/src/fixture.rs

tests/src/lib.rs:
tests/src/fixture.rs:
