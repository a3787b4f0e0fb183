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
    /// How log lines (stderr) are written: `text`, or `json` (one object per line, for log
    /// tools). Colours only when stderr is a terminal (and $NO_COLOR is unset).
    #[arg(long, global = true, value_enum, default_value = "text", env = "CITRON_LOG_FORMAT")]
    pub log_format: crate::logging::LogFormat,
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
        #[arg(long, value_name = "DIR", default_value = "citron-data", env = "CITRON_DATA")]
        data: PathBuf,
    },
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks job descriptions; prints every error as file:line:col: message.
    ///
    /// Each job is rendered for every DUT of the lab (or --dut's), so template variables and
    /// `file:` roots are checked too. A lab file given as a job is recognised and checked as a
    /// lab file; `--lab LAB.yaml` alone checks the lab file.
    #[command(after_help = EXIT_CODES)]
    Validate {
        /// The lab file (default: the embedded default lab).
        #[arg(long, value_name = "LAB.yaml", env = "CITRON_LAB")]
        lab: Option<PathBuf>,
        /// Render for this DUT only (default: every DUT of the lab).
        #[arg(long, value_name = "ID")]
        dut: Option<String>,
        /// The job descriptions; `-` reads one from standard input.
        #[arg(value_name = "JOB.yaml")]
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
        #[arg(long, value_name = "LAB.yaml", env = "CITRON_LAB")]
        lab: Option<PathBuf>,
        /// `table` (for people) or `json` (for scripts).
        #[arg(long, value_enum, default_value = "table")]
        format: RenderFormat,
    },
    /// Prints the control API's OpenAPI 3.1 document (JSON), as `GET /api/v1/openapi.json`
    /// answers it.
    Openapi,
    /// Serves the lab: HTTP, TFTP, NBD and the control API, until SIGINT or SIGTERM.
    ///
    /// Prints `citron: listening http=ADDR tftp=ADDR nbd=ADDR api=ADDR` on stdout once every
    /// server is bound and every --job is loaded (port 0 picks a free port; `off` = disabled);
    /// then tells systemd READY=1 (Type=notify) and `GET /api/v1/ready` answers 200. Requests of
    /// a DUT whose job is still loading wait for it (limits.job_wait). Logs go to stderr, one
    /// access line per request; RUST_LOG sets the level (default info). Every flag can also be
    /// set by the environment variable shown with it.
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// The lab file (default: the embedded default lab, dut1 = 127.0.0.2, dut2 = 127.0.0.3).
        #[arg(long, value_name = "LAB.yaml", env = "CITRON_LAB")]
        lab: Option<PathBuf>,
        /// Loads a job for a DUT at start; the job file's directory may be read by `file:` sources.
        /// In $CITRON_JOB, several are separated by commas.
        #[arg(long = "job", value_name = "DUT=JOB.yaml", env = "CITRON_JOB", value_delimiter = ',')]
        jobs: Vec<String>,
        /// HTTP address (IP:PORT or HOST:PORT), or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_HTTP, env = "CITRON_HTTP")]
        http: String,
        /// TFTP address, or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_TFTP, env = "CITRON_TFTP")]
        tftp: String,
        /// NBD address, or `off`.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_NBD, env = "CITRON_NBD")]
        nbd: String,
        /// Lab API address, or `off`. Beyond loopback a token is needed: one of the lab file's
        /// `api_token` or `api_token_file`, or $CITRON_API_TOKEN (only one of them); once set, it
        /// is required on every address, loopback included.
        #[arg(long, value_name = "ADDR", default_value = citron_lab::server::DEFAULT_API, env = "CITRON_API")]
        api: String,
        /// The address DUTs reach citron at, when listening on 0.0.0.0 or [::].
        #[arg(long, value_name = "IP", env = "CITRON_ADVERTISE")]
        advertise: Option<std::net::IpAddr>,
        /// Where the cache and disks are kept.
        #[arg(long, value_name = "DIR", default_value = "citron-data", env = "CITRON_DATA")]
        data: PathBuf,
        /// Where the lab's state (DUTs added through the API, jobs, counted reads) is kept:
        /// `postgres://USER:PASS@HOST:PORT/DB[?sslmode=require]`, or `sqlite://PATH`
        /// (default: DIR/state.sqlite in --data). Migrated at start.
        #[arg(long, value_name = "URL", env = "CITRON_STATE")]
        state: Option<String>,
        /// This gateway's name, in a lab of several gateways sharing one --state (PostgreSQL):
        /// it serves the lab file's DUTs marked `gateway: NAME` (and unmarked ones no other
        /// gateway serves) and the DUTs added through its API (default: the host name).
        #[arg(long, value_name = "NAME", env = "CITRON_GATEWAY")]
        gateway: Option<String>,
    },
    /// The lab's state store.
    #[command(subcommand, after_help = EXIT_CODES)]
    State(StateCommand),
    /// Boots a QEMU virtual DUT from an in-process citron and watches its serial console.
    ///
    /// The check to run on a job before it goes to real hardware: iPXE fetches the generated
    /// boot script, kernel and initramfs over --proto, the console streams to stdout (and to
    /// `boot-test-<DUT>.log`), and the command passes when --expect is seen. With --image, a
    /// whole disk image boots from citron's NBD export with its own bootloader (an image
    /// build's test): it passes when the system reaches userspace and fails at once on a
    /// kernel panic, an emergency shell, a bootloader error and the like.
    #[command(name = "boot-test")]
    BootTest(crate::boot_test::BootTestArgs),
    /// Results on a remote citron (`--server URL` or $CITRON_SERVER, `--token-file FILE` or
    /// $CITRON_TOKEN): upload a run's files, find the newest, list runs, find and replay a run
    /// with the same inputs.
    #[command(after_help = EXIT_CODES)]
    Results(crate::client::ResultsArgs),
    /// The DUT pool of a remote citron (`--server`, `--token-file` as for `results`): request,
    /// list, release, fail, extend reservations; the pool's status; `dut enable|disable`.
    #[command(after_help = EXIT_CODES)]
    Pool(crate::pool::PoolArgs),
    /// Prints a shell completion script, e.g. `source <(citron completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Prints citron's man page (roff), e.g. `citron man > /usr/share/man/man1/citron.1`.
    Man,
    /// Prints the JSON Schema (draft 2020-12) of job or lab files, for editors: save it and
    /// point yaml-language-server at it (`# yaml-language-server: $schema=citron-job.json`).
    Schema {
        /// Which files.
        #[arg(value_enum)]
        kind: SchemaKind,
    },
}

/// `citron schema KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// Job descriptions.
    Job,
    /// Lab files.
    Lab,
}

/// `citron render --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderFormat {
    /// A table per deployment step, then the URLs.
    Table,
    /// One JSON document.
    Json,
}
