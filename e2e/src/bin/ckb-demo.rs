//! `ckb-demo`: the local demo behind `scripts/demo.sh` (see `ckb_e2e::demo`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ckb_e2e::demo::DemoArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ckb-demo: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ckb_e2e::demo::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ckb-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
