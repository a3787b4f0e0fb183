//! What the user typed (clap). Checked and turned into values in `main.rs`'s commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The exit codes, shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (validate: every job is valid; serve: stopped by SIGINT/SIGTERM)
  1  a job description is invalid (its errors are printed as file:line:col: message)
  2  usage error, unreadable lab file, or a server that could not start
  130/143  serve: a second SIGINT/SIGTERM, which stops without waiting for transfers";

/// citron: the artifact server of a CI test lab.
#[derive(Debug, Parser)]
#[command(name = "citron", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `citron state …`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Creates or migrates the state to this citron's schema (`serve` also does it at start);
    /// refuses a state migrated by a newer citron. Prints the schema version.
    Migrate {
        /// As `serve --state` (default: DIR/state.sqlite in --data).
        #[arg(long, value_name = "URL", env = "CITRON_STATE")]
        state: Option<String>,
        /// As `serve --data`.
        #[arg(long, value_name = "DIR", default_value = "citron-data")]
        data: PathBuf,
    },
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks job descriptions; prints every error as file:line:col: message.
    ///
    /// Each job is rendered for the lab's first DUT (or a placeholder DUT), so template
    /// variables and `file:` roots are checked too.
    #[command(after_help = EXIT_CODES)]
    Validate {
        /// The lab file (default: the embedded default lab).
        #[arg(long, value_name = "LAB.yaml")]
        lab: Option<PathBuf>,
        /// The job descriptions.
        #[arg(required = true, value_name = "JOB.yaml")]
        jobs: Vec<PathBuf>,
    },
    /// Prints what a job gives one DUT: every artifact and the URLs the DUT would use.
    #[command(after_help = EXIT_CODES)]
    Render {
        /// The job description.
        #[arg(value_name = "JOB.yaml")]
        job: PathBuf,
        /// The DUT to render for.
        #[arg(long, value_name = "ID")]
        dut: String,
        /// The lab file (default: the embedded default lab).
        #[arg(long, value_name = "LAB.yaml")]
        lab: Option<PathBuf>,
    },
    /// Prints the control API's OpenAPI 3.1 document (JSON), as `GET /api/v1/openapi.json`
    /// answers it.
    Openapi,
    /// Serves the lab: HTTP, TFTP, NBD and the control API, until SIGINT or SIGTERM.
    ///
    /// Prints `citron: listening http=ADDR tftp=ADDR nbd=ADDR api=ADDR` on stdout once every
    /// server is bound and every --job is loaded (port 0 picks a free port; `off` = disabled).
    /// Logs go to stderr; RUST_LOG sets the level (default info).
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// The lab file (default: the embedded default lab, dut1 = 127.0.0.2, dut2 = 127.0.0.3).
        #[arg(long, value_name = "LAB.yaml")]
        lab: Option<PathBuf>,
        /// Loads a job for a DUT at start; the job file's directory may be read by `file:` sources.
        #[arg(long = "job", value_name = "DUT=JOB.yaml")]
        jobs: Vec<String>,
        /// HTTP address, or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_HTTP)]
        http: String,
        /// TFTP address, or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_TFTP)]
        tftp: String,
        /// NBD address, or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_NBD)]
        nbd: String,
        /// Lab API address, or `off`. Beyond loopback a token is needed: one of the lab file's
        /// `api_token` or `api_token_file`, or $CITRON_API_TOKEN (only one of them); once set, it
        /// is required on every address, loopback included.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_API)]
        api: String,
        /// The address DUTs reach citron at, when listening on 0.0.0.0 or [::].
        #[arg(long, value_name = "IP")]
        advertise: Option<std::net::IpAddr>,
        /// Where the cache and disks are kept.
        #[arg(long, value_name = "DIR", default_value = "citron-data")]
        data: PathBuf,
        /// Where the lab's state (DUTs added through the API, jobs, counted reads) is kept:
        /// `postgres://USER:PASS@HOST:PORT/DB[?sslmode=require]`, or `sqlite://PATH`
        /// (default: DIR/state.sqlite in --data). Migrated at start.
        #[arg(long, value_name = "URL", env = "CITRON_STATE")]
        state: Option<String>,
    },
    /// The lab's state store.
    #[command(subcommand, after_help = EXIT_CODES)]
    State(StateCommand),
    /// Boots a QEMU virtual DUT from an in-process citron and watches its serial console.
    ///
    /// The check to run on a job before it goes to real hardware: iPXE fetches the generated
    /// boot script, kernel and initramfs over --proto, the console streams to stdout (and to
    /// `boot-test-<DUT>.log`), and the command passes when --expect is seen.
    #[command(name = "boot-test")]
    BootTest(crate::boot_test::BootTestArgs),
    /// Results on a remote citron (`--server URL` or $CITRON_SERVER, `--token-file FILE` or
    /// $CITRON_TOKEN): upload a run's files, find the newest, list runs.
    #[command(after_help = EXIT_CODES)]
    Results(crate::client::ResultsArgs),
}
