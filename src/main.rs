//! The `unfold` command line; everything is in `cli/`, one module per command.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
