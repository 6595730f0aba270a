//! The `anticamera` binary: the command line ([`cli`]) over the library; see `anticamera --help`.
//! The CLI lives here, not in the library, because `demo` and `demo-portal` start the demo portal
//! (crate `anticamera-demo-portal`), which the proxy library does not contain.
#![forbid(unsafe_code)]

mod cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anticamera: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
