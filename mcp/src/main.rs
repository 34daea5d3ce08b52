//! The `msp-mcp` binary: runs the command line and maps errors to exit status 2.

use std::process::ExitCode;

fn main() -> ExitCode {
    match msp_mcp::cli::main() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Broken pipes (e.g. `evidence export | head`) are not errors worth a message.
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("msp-mcp: {err:#}");
            ExitCode::from(2)
        }
    }
}
