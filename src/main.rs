//! The `switchyard` command: a thin CLI over the library. Its commands live
//! in `cli/`, one file per group.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
