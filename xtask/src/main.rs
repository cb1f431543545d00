//! `cargo xtask`: parse the flags and hand them to the subcommand.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let flags = xtask::flags::Xtask::parse();
    match xtask::run(flags) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
