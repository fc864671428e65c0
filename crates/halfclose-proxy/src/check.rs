//! `halfclose-proxy check-config FILE`: reads and checks a config file as
//! the proxy would at start (certificate and CA files included), and prints
//! its routing table, or every error with its line.
//!
//! Imports: `cli` (the flags' defaults) and `config`.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::ServeArgs;
use crate::config::{Config, Defaults, routing_table};

/// Exit status 0 when `file` is a valid config, 1 when not.
pub(crate) fn run(file: &Path) -> ExitCode {
    let defaults = Defaults::from_args(&ServeArgs::defaults());
    match Config::load(file, &defaults) {
        Ok(config) => {
            say!("{}: ok", file.display());
            say!("{}", routing_table(&config).trim_end());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for line in errors.lines() {
                eprintln!("{line}");
            }
            eprintln!(
                "{}: {} error(s); not a valid config",
                file.display(),
                errors.list.len()
            );
            ExitCode::FAILURE
        }
    }
}
