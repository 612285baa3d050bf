//! The `itproxy` binary: the command line (parsing, dispatch, printing). The daemon it starts
//! with `up` is the `itproxy-daemon` crate; protocol work lives in the subsystem crates.

// Every command prints through these two, which shadow std's in every module of the crate
// (a macro_rules! name in scope comes before the prelude's): a reader that stops reading
// (`itproxy routes | head -1`) ends the command quietly with success, as ripgrep does, where
// std's would panic ("failed printing to stdout: Broken pipe") with a backtrace.
// None prints without a newline yet; one that does will go through `out` too.
#[allow(unused_macros)]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::out::print(format_args!($($arg)*))
    };
}

macro_rules! println {
    () => {
        $crate::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cli;
mod client;
mod commands;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{default_state_dir, runtime};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let daemon = matches!(cli.command, Command::Up(_));
    let level = match (cli.quiet, cli.verbose, daemon) {
        (true, _, _) => "error",
        (_, 0, true) => "info,pingora_core=warn,pingora_core::services::listening=off,pingora_core::connectors=off,pingora_proxy=off,pingora=warn,hickory_server=warn,hickory_proto=warn,hickory_resolver=warn,hickory_net=warn",
        (_, 0, false) => "warn",
        (_, 1, _) => "debug,pingora_core=info,pingora_proxy=info,hyper=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = match cli.state_dir {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let config = cli.config;
    match cli.command {
        Command::Up(args) => commands::up::run(args, config, state_dir),
        Command::CheckConfig { file } => commands::check_config::run(file.or(config)),
        Command::Ca(cmd) => commands::ca::run(cmd, config, &state_dir),
        Command::Down { env, volumes } => {
            commands::env::down_command(config, env, volumes, &state_dir)
        }
        Command::Apps { json } => runtime()?.block_on(commands::env::apps(&state_dir, json)),
        Command::App(cmd) => runtime()?.block_on(commands::env::app(&state_dir, cmd)),
        Command::Snapshot(cmd) => runtime()?.block_on(commands::env::snapshot(&state_dir, cmd)),
        Command::Time(cmd) => runtime()?.block_on(commands::env::time(&state_dir, cmd)),
        Command::Logs(args) => runtime()?.block_on(commands::env::logs(config, &state_dir, args)),
        Command::Mock(cmd) => runtime()?.block_on(commands::mock::run(cmd)),
        Command::Requests(args) => runtime()?.block_on(commands::requests::run(args, &state_dir)),
        Command::Stop => commands::env::stop_command(&state_dir),
        Command::Reload { json } => runtime()?.block_on(commands::env::reload(&state_dir, json)),
        Command::Dns(cmd) => commands::dns::run(cmd, config, &state_dir),
        Command::Resolve {
            name,
            record_type,
            json,
        } => runtime()?.block_on(commands::resolve::run(
            &state_dir,
            &name,
            &record_type,
            json,
        )),
        Command::Bench(args) => commands::bench::main(args, &state_dir),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = cli::Cli::command();
            clap_complete::generate(shell, &mut cmd, "itproxy", &mut out::stdout());
            Ok(())
        }
        Command::Browser(args) => runtime()?.block_on(commands::browser::run(&state_dir, args)),
        Command::Route(args) => runtime()?.block_on(commands::route(args, &state_dir)),
        Command::Unroute { name, json } => {
            runtime()?.block_on(commands::unroute(&name, json, &state_dir))
        }
        Command::Routes { json } => runtime()?.block_on(commands::routes(json, &state_dir)),
        Command::Status { json } => runtime()?.block_on(commands::status(json, &state_dir)),
    }
}

/// Standard output for every command (`print!`, `println!` and [`out::stdout`]): when its
/// reader has gone (EPIPE), the process ends there, quietly and with success.
///
/// Not by restoring SIGPIPE's default action at start, as C programs have it: Rust ignores
/// SIGPIPE so that a write to a peer that has gone fails with EPIPE, and the daemon (`itproxy
/// up` runs it in this process) relies on that: writes to Unix sockets (tokio's go through
/// std's, write(2)) and vectored writes (writev(2)) raise SIGPIPE, only std's TCP `write`
/// passes MSG_NOSIGNAL, so a client hanging up on the control socket or a proxied connection
/// would kill it. Nor by mapping any BrokenPipe error to success in `main`: a client
/// command's own socket to the daemon can fail that way too, and that is an error. Only
/// stdout's EPIPE ends the process, here.
mod out {
    use std::io::{self, Write};

    /// Standard output, locked; a write its reader has gone from ends the process.
    pub(crate) struct Stdout(io::StdoutLock<'static>);

    pub(crate) fn stdout() -> Stdout {
        Stdout(io::stdout().lock())
    }

    /// `result`, unless it says stdout's reader has gone: then the process ends with success.
    fn unless_gone<T>(result: io::Result<T>) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other,
        }
    }

    impl Write for Stdout {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            unless_gone(self.0.write(buf))
        }

        fn flush(&mut self) -> io::Result<()> {
            unless_gone(self.0.flush())
        }
    }

    /// `print!`: any failure but a reader gone (a full disk, say) is an error, exit 1.
    pub(crate) fn print(args: std::fmt::Arguments<'_>) {
        if let Err(e) = stdout().write_fmt(args) {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}
