//! What console lines mean, whatever boots: the failure catalogue (each entry ends a run at
//! once with its line), the warnings, the lines that say a system reached userspace, and the
//! markers of the boot stages. Pure, so every entry is unit-tested against real console lines.
//!
//! The failures are those coreos-assembler's kola and image builders' CI watch for, said the way
//! each component says them: the kernel (panic, Oops, BUG), the initramfs (dracut refusing to
//! continue, initramfs-tools giving up on the root device), systemd (emergency and rescue mode,
//! ordering cycles) and the bootloaders and firmware (GRUB's `error: file … not found`, SeaBIOS
//! finding no bootable disk, SYSLINUX not finding its kernel). Bootloader entries only count
//! before the kernel started: later, an `error: …` line is some program's own business.

use regex::Regex;

/// A catalogue entry.
struct Rule {
    /// What went wrong, as the verdict says it.
    reason: &'static str,
    /// The line that shows it.
    pattern: &'static str,
    /// Only before the kernel started (bootloader and firmware messages).
    before_kernel: bool,
}

/// Lines that fail a run. Case-sensitive: each is what its component prints.
const FAILURES: &[Rule] = &[
    Rule { reason: "kernel panic", pattern: r"Kernel panic - not syncing", before_kernel: false },
    Rule { reason: "kernel Oops", pattern: r"\bOops: ", before_kernel: false },
    Rule { reason: "kernel BUG", pattern: r"\bBUG: ", before_kernel: false },
    Rule {
        reason: "emergency shell",
        pattern: r"You are in emergency mode|Welcome to emergency mode|Entering emergency mode|Give root password for maintenance|Cannot open access to console, the root account is locked",
        before_kernel: false,
    },
    Rule { reason: "rescue shell", pattern: r"You are in rescue mode|Welcome to rescue mode", before_kernel: false },
    Rule {
        reason: "the initramfs gave up",
        pattern: r"Refusing to continue|Gave up waiting for (root|suspend/resume) (file system )?device|Dropping to a shell!|dracut-initqueue\[\d+\]: Warning: Could not boot",
        before_kernel: false,
    },
    Rule { reason: "systemd ordering cycle", pattern: r"[Oo]rdering cycle (found|on)|Found ordering cycle", before_kernel: false },
    Rule { reason: "the init process died", pattern: r"Attempted to kill init!", before_kernel: false },
    Rule {
        reason: "bootloader error",
        pattern: r"^error: (file .* not found|no such (device|partition)|unknown filesystem|you need to load the kernel first|invalid (magic number|signature)|disk .* not found|out of memory)|grub rescue>|Could not find kernel image|Boot error$|Failed to load ldlinux\.c32|Missing operating system|Invalid partition table|Error loading operating system",
        before_kernel: true,
    },
    Rule {
        reason: "no bootloader",
        pattern: r#"Boot failed: not a bootable disk|Boot failed: could not read the boot disk|No bootable option or device was found|No bootable device|BdsDxe: starting Boot\d+ "EFI Internal Shell"|UEFI Interactive Shell"#,
        before_kernel: true,
    },
];

/// Lines reported as warnings: a run goes on.
const WARNINGS: &[(&str, &str)] = &[
    ("a unit failed to start", r"Failed to start "),
    ("kernel warning", r"WARNING: CPU: \d+ PID: \d+"),
    ("a dependency failed", r"Dependency failed for "),
];

/// What says that the real system reached userspace (not the initramfs): systemd's targets and
/// its start-up summary, or a login prompt. A prompt does not end its line, so it is matched on
/// the partial line too.
const USERSPACE: &str = r"Reached target .*(Multi-User System|Graphical Interface)|Startup finished in |^\S+ login: ?$";

/// Where each stage starts on the console. The firmware stage starts with QEMU.
const BOOTLOADER: &str =
    r"Booting from (Hard Disk|DVD/CD|Floppy)|BdsDxe: starting Boot|(SYS|EXT|ISO|PXE)LINUX \d|Welcome to GRUB|GNU GRUB|systemd-boot";
const KERNEL: &str = r"Linux version \d|EFI stub: |^\[\s*0\.000000\] ";
const USERSPACE_START: &str = r"Run \S+ as init process|systemd\[1\]: |Welcome to .*!";

/// A stage of a boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Stage {
    Firmware,
    Bootloader,
    Kernel,
    Userspace,
}

impl Stage {
    pub(super) fn name(self) -> &'static str {
        match self {
            Stage::Firmware => "firmware",
            Stage::Bootloader => "bootloader",
            Stage::Kernel => "kernel",
            Stage::Userspace => "userspace",
        }
    }
}

/// What one console line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Hit {
    /// A catalogue failure: the reason and the line.
    Fail(&'static str, String),
    /// A warning: what and the line.
    Warn(&'static str, String),
}

/// The catalogue, compiled, with the user's `--allow` patterns.
#[derive(Debug)]
pub(super) struct Catalogue {
    failures: Vec<(&'static str, Regex, bool)>,
    warnings: Vec<(&'static str, Regex)>,
    allow: Vec<Regex>,
    userspace: Regex,
    stages: [(Stage, Regex); 3],
}

fn compiled(p: &str) -> Regex {
    Regex::new(p).expect("the catalogue's patterns compile (unit-tested)")
}

impl Catalogue {
    /// The default catalogue; a line matching one of `allow` is known noise and never fails
    /// nor warns.
    pub(super) fn new(allow: Vec<Regex>) -> Catalogue {
        Catalogue {
            failures: FAILURES.iter().map(|r| (r.reason, compiled(r.pattern), r.before_kernel)).collect(),
            warnings: WARNINGS.iter().map(|(w, p)| (*w, compiled(p))).collect(),
            allow,
            userspace: compiled(USERSPACE),
            stages: [
                (Stage::Bootloader, compiled(BOOTLOADER)),
                (Stage::Kernel, compiled(KERNEL)),
                (Stage::Userspace, compiled(USERSPACE_START)),
            ],
        }
    }

    /// What `line` means; `kernel_started` once a kernel stage marker was seen.
    pub(super) fn check(&self, line: &str, kernel_started: bool) -> Option<Hit> {
        if self.allow.iter().any(|a| a.is_match(line)) {
            return None;
        }
        let line_trimmed = line.trim();
        for (reason, re, before_kernel) in &self.failures {
            if (!before_kernel || !kernel_started) && (re.is_match(line) || re.is_match(line_trimmed)) {
                return Some(Hit::Fail(reason, line_trimmed.to_string()));
            }
        }
        self.warnings.iter().find(|(_, re)| re.is_match(line)).map(|(w, _)| Hit::Warn(w, line_trimmed.to_string()))
    }

    /// Whether `text` (a line, or a prompt not yet ended) says userspace was reached.
    pub(super) fn userspace(&self, text: &str) -> bool {
        !text.is_empty() && self.userspace.is_match(text.trim_start())
    }

    /// The stage `line` starts, if any.
    pub(super) fn stage(&self, line: &str) -> Option<Stage> {
        self.stages.iter().find(|(_, re)| re.is_match(line)).map(|(s, _)| *s)
    }
}
