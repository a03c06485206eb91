//! `ckb-operator`: see `ckb-operator --help`. Everything lives in the library.

fn main() -> std::process::ExitCode {
    ckb_operator::cli::main()
}
