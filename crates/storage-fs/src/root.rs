//! Where the store lives: `--home`, then `PRODIGY_HOME`, then `~/.prodigy`.
//!
//! The choice is made by one pure function over its inputs, so that tests
//! (and the CLI's `status`) never touch the real home directory, and so that
//! the rule is written once. Prodigy once parsed a second variable
//! (`PRODIGY_STORAGE_DIR`) and ignored it; only these three sources exist.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use storage_core::{Error, Result};

/// How the store's location was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// The `--home` option.
    Flag,
    /// The `PRODIGY_HOME` environment variable.
    Env,
    /// The default, `~/.prodigy`.
    Default,
    /// The `--store` option naming a directory.
    StoreFlag,
    /// The `PRODIGY_STORE` environment variable naming a directory.
    StoreEnv,
}

impl fmt::Display for RootSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RootSource::Flag => "--home",
            RootSource::Env => "PRODIGY_HOME",
            RootSource::Default => "default (~/.prodigy)",
            RootSource::StoreFlag => "--store",
            RootSource::StoreEnv => "PRODIGY_STORE",
        })
    }
}

/// The store's location and how it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootChoice {
    /// The store's root directory.
    pub path: PathBuf,
    /// Which source chose it.
    pub source: RootSource,
}

/// Chooses the store root: `flag`, else a non-empty `prodigy_home`, else
/// `home_dir/.prodigy`.
pub fn resolve_root(
    flag: Option<&Path>,
    prodigy_home: Option<&OsStr>,
    home_dir: Option<&Path>,
) -> Result<RootChoice> {
    if let Some(p) = flag {
        return Ok(RootChoice {
            path: p.to_owned(),
            source: RootSource::Flag,
        });
    }
    if let Some(p) = prodigy_home.filter(|p| !p.is_empty()) {
        return Ok(RootChoice {
            path: PathBuf::from(p),
            source: RootSource::Env,
        });
    }
    match home_dir {
        Some(h) => Ok(RootChoice {
            path: crate::Layout::default_root(h),
            source: RootSource::Default,
        }),
        None => Err(Error::NoStoreLocation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_default() {
        let home = Some(Path::new("/home/u"));
        let env = Some(OsStr::new("/env/store"));
        let r = resolve_root(Some(Path::new("/flag")), env, home).expect("flag");
        assert_eq!(
            (r.path.as_path(), r.source),
            (Path::new("/flag"), RootSource::Flag)
        );
        let r = resolve_root(None, env, home).expect("env");
        assert_eq!(
            (r.path.as_path(), r.source),
            (Path::new("/env/store"), RootSource::Env)
        );
        let r = resolve_root(None, Some(OsStr::new("")), home).expect("empty env is unset");
        assert_eq!(
            (r.path.as_path(), r.source),
            (Path::new("/home/u/.prodigy"), RootSource::Default)
        );
        let err = resolve_root(None, None, None).expect_err("nowhere");
        assert!(err.to_string().contains("set PRODIGY_HOME or pass --home"));
    }
}
