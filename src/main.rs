//! The `anticamera` binary: all logic lives in the library; see `anticamera --help`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match anticamera::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anticamera: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
