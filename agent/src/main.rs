//! Entry point of the `msp-compliance-agent` binary: parse arguments, run, map to an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    match msp_compliance_agent::cli::main() {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Broken pipes (e.g. `check | head`) are not errors worth a message.
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("msp-compliance-agent: {err:#}");
            ExitCode::from(2)
        }
    }
}
