//! The `lockledger` binary: see `cli` for commands and exit codes.

fn main() {
    std::process::exit(lockledger::cli::main());
}
