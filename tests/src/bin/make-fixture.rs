//! Writes the test fixture's legacy project into a directory, for the
//! bundled sample and for trying things by hand:
//!
//! ```text
//! cargo run -p storage-tests --bin make-fixture -- DIR
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: make-fixture DIR")?,
    );
    if dir.exists() && fs_err::read_dir(&dir)?.next().is_some() {
        bail!(
            "`{}` is not empty; give a new or empty directory",
            dir.display()
        );
    }
    fs_err::create_dir_all(&dir)?;
    storage_tests::fixture::legacy_project(&dir);
    println!("wrote a legacy Prodigy project to {}", dir.display());
    Ok(())
}
