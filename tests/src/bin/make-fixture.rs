//! Writes the test fixture's legacy project into a directory, for the
//! bundled sample and for trying things by hand:
//!
//! ```text
//! cargo run -p storage-tests --bin make-fixture -- DIR
//! cargo run -p storage-tests --bin make-fixture -- --large SCALE DIR   # the benchmark's tree
//! cargo run -p storage-tests --bin make-fixture -- --layout-0 DIR     # a store an older Prodigy wrote
//! cargo run -p storage-tests --bin make-fixture -- --layout-0-large SCALE DIR   # the upgrade benchmark's
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: make-fixture [--large SCALE | --layout-0 | --layout-0-large SCALE] DIR";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice()
        && flag == "--layout-0"
    {
        let dir = PathBuf::from(dir);
        fs_err::create_dir_all(&dir)?;
        storage_tests::layout0::store(&dir);
        println!("wrote a layout-0 store to {}", dir.display());
        return Ok(());
    }
    if let [flag, scale, dir] = args.as_slice()
        && flag == "--layout-0-large"
    {
        let t = storage_tests::layout0::large_store(Path::new(dir), scale.parse().context(USAGE)?);
        println!(
            "wrote a layout-0 store: {} files, {} bytes, {} event lines to {dir}",
            t.files, t.bytes, t.event_lines
        );
        return Ok(());
    }
    let (scale, dir) = match args.as_slice() {
        [flag, scale, dir] if flag == "--large" => {
            (Some(scale.parse::<u64>().context(USAGE)?), dir)
        }
        [dir] if !dir.starts_with('-') => (None, dir),
        _ => bail!(USAGE),
    };
    let dir = PathBuf::from(dir);
    if dir.exists() && fs_err::read_dir(&dir)?.next().is_some() {
        bail!(
            "`{}` is not empty; give a new or empty directory",
            dir.display()
        );
    }
    fs_err::create_dir_all(&dir)?;
    if let Some(scale) = scale {
        let t = storage_tests::fixture::large_legacy_project(&dir, scale);
        println!(
            "wrote {} files, {} bytes, {} event lines to {}",
            t.files,
            t.bytes,
            t.event_lines,
            dir.display()
        );
    } else {
        storage_tests::fixture::legacy_project(&dir);
        println!("wrote a legacy Prodigy project to {}", dir.display());
    }
    Ok(())
}
