//! Writing command output to stdout. A closed pipe (`reparam … | head`) ends the program
//! quietly instead of panicking, as Unix tools do; other write errors are returned.

/// Like `println!`, in a function returning `anyhow::Result`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            return Err(e.into());
        }
    }};
}
