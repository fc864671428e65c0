//! `halfclose-proxy`: a reverse proxy whose upgraded connections (WebSocket and
//! any `101 Switching Protocols` protocol) keep TCP half-close intact.
//!
//! - `halfclose-proxy --listen HOST:PORT --upstream http://HOST:PORT` proxies to
//!   an upstream.
//! - Without `--upstream` it also starts a built-in demo upstream and proxies
//!   to it (feature `demo`, on by default; without it, that is an error).
//! - `halfclose-proxy --config FILE` serves the listeners, routes and upstream
//!   groups of a TOML file, reloaded on SIGHUP.
//! - `halfclose-proxy check-config FILE` checks one and prints its routes.
//! - `halfclose-proxy probe URL` checks whether half-close survives the path to URL.
//!
//! This file is the entry point only: the global allocator, the `say!`
//! macro, the module list, and `main` (parse the command line, run `serve`,
//! `check` or `probe`, print an error as one line). No module imports it.
//!
//! The modules and what each imports of the crate. The arrows point one way:
//! no module imports one that imports it, directly or through others.
//!
//! ```text
//! main        -> check, cli, pages, probe, serve  the entry point
//! check       -> cli, config, routes              `check-config FILE`
//! serve       -> access_log, admin, cli, config,  runs the workers, the listeners,
//!                conn, demo, fds, generation,     the admin port, the demo, the
//!                handover, listen, signals,       reloads, the hand-over and the
//!                stack, units, upstreams          shutdown
//! admin       -> accept, generation, upstreams    --admin-listen
//! generation  -> access_log, config, routes,      one worker's proxies and routes
//!                stack, upstreams                 for one config; the router
//! upstreams   -> access_log, config               the proxy of an upstream group
//! config      -> access_log, cli, proxy_protocol, the --config file, or the flags
//!                routes, tls, units
//! cli         -> access_log, probe,               the clap types
//!                proxy_protocol, units
//! probe       -> echo, tls, units                 the half-close checker (a client)
//! stack       -> access_log, counted              the request path around the proxy
//! counted     -> access_log                       the bodies the access log counts
//! listen      -> accept, conn                     a worker's socket and accept loop
//! conn        -> proxy_protocol (and its own      one client connection
//!                submodules)
//! demo        -> accept, echo                     the demo upstream (feature `demo`)
//! routes, signals, handover, proxy_protocol,      the routing table, the signals,
//! access_log, accept, echo, fds, pages, tls,      socket hand-over, PROXY headers,
//! units                                           the access log...: nothing of
//!                                                 the crate
//! ```

// Before the modules: a macro is in scope in the files declared after it.
/// Prints a line on stdout; a closed stdout (`| head -1`) is not a reason to
/// stop proxying, so errors are ignored (`println!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod accept;
mod access_log;
mod admin;
mod check;
mod cli;
mod config;
mod conn;
mod counted;
#[cfg(feature = "demo")]
mod demo;
mod echo;
mod fds;
mod generation;
#[cfg(target_os = "linux")]
mod handover;
mod listen;
mod pages;
mod probe;
mod proxy_protocol;
mod routes;
mod serve;
mod signals;
mod stack;
#[cfg(feature = "tls")]
mod tls;
mod units;
mod upstreams;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before the heap grows. Kernels without the setting (before 3.15) keep
    // their pages: nothing to report.
    let _ = pages::small_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout as clap prints them.
        Err(e) if !e.use_stderr() => e.exit(),
        // Errors: one line, no usage dump.
        Err(e) => {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("halfclose-proxy: error: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Probe(args)) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(probe::run(args)),
            Err(e) => Err(format!("cannot start the runtime: {e}")),
        },
        Some(Command::CheckConfig(args)) => Ok(check::run(&args.file)),
        None => serve::run(cli.serve),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("halfclose-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}
