//! The keys of a job file as types: the JSON Schema `citron schema job` publishes
//! ([`job_schema`]) is derived from them, and the positioned reader (`parse`) takes the keys it
//! accepts from them too, so that what an editor completes and what `citron validate` accepts
//! cannot drift apart.
//!
//! These types only describe the file's shape; the job is *read* by `parse` (which keeps every
//! value's position and reports every problem at once) and rendered to [`super::ResolvedJob`].
//! Rules a schema cannot state (templates, paths, URLs, `file:` roots, duplicate paths) are
//! only checked there.

use schemars::{JsonSchema, Schema};
use serde::Deserialize;

use crate::limits::{Dur, Size};
pub(crate) use crate::yaml::de::fields_of;

/// The sources of a file entry, of which exactly one is given.
pub(crate) const SOURCE_KEYS: &[&str] = &["data", "url", "file", "result"];
/// The keys of `kernel:` and `initramfs:` ([`BootFile`]). Listed here because a flattened
/// struct hides its keys from the reader's `fields_of` (a test checks them against the schema).
pub(crate) const BOOT_FILE_KEYS: &[&str] = &["url", "file", "data", "result", "sha256"];
/// The keys of a `storage.<space>[]` entry ([`FileEntry`]), as [`BOOT_FILE_KEYS`].
pub(crate) const FILE_ENTRY_KEYS: &[&str] = &["path", "data", "url", "file", "result", "sha256", "lifetime"];
/// What a disk is made from, of which exactly one is given.
pub(crate) const DISK_SOURCES: &[&str] = &["url", "file", "filesystem", "raw"];
/// The sources of a filesystem's tarball, of which exactly one is given.
pub(crate) const TARBALL_KEYS: &[&str] = &["url", "file"];

/// A citron job description: what each DUT of the job boots and may read.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "citron job description")]
pub struct JobFile {
    /// The job's name: its runs are filed under it (1 to 128 letters, digits, `.`, `_`, `-`).
    #[serde(default)]
    pub name: Option<String>,
    /// What the job sends back: a run is opened at `job_start` (needs `name:`).
    #[serde(default)]
    pub results: Option<ResultsFile>,
    /// The boots of the job.
    pub deployment: Deployment,
}

/// `results:`
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultsFile {
    /// The revision built or tested (templates allowed); `?revision=` overrides it.
    #[serde(default)]
    pub revision: Option<String>,
    /// The platform the results are for.
    #[serde(default)]
    pub platform: Option<String>,
    /// The largest file one upload may bring (at most `limits.results_max`).
    #[serde(default)]
    pub max_size: Option<Size>,
}

/// `deployment:`
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The initial boot.
    pub start: StepFile,
    /// What later boots of the same job use; fields it leaves out come from `start`.
    #[serde(rename = "continue", default)]
    pub continue_: Option<StepFile>,
}

/// `deployment.start` or `deployment.continue`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// The kernel to boot (citron serves it at generated paths).
    #[serde(default)]
    pub kernel: Option<BootFile>,
    /// The initramfs to boot with it.
    #[serde(default)]
    pub initramfs: Option<BootFile>,
    /// The kernel command line: a string, or a list of strings joined with spaces.
    #[serde(default)]
    pub cmdline: Option<Cmdline>,
    /// The files and disks DUTs may read.
    #[serde(default)]
    pub storage: Option<Storage>,
}

/// A kernel command line.
#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Cmdline {
    /// The whole line.
    One(String),
    /// Arguments, joined with spaces.
    Many(Vec<String>),
}

/// `kernel:` or `initramfs:`: exactly one source.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = one_source)]
pub struct BootFile {
    /// Where the content comes from.
    #[serde(flatten)]
    pub source: Sources,
}

/// The sources of a file (`kernel`, `initramfs`, `storage.<space>[]`), of which exactly one is
/// given, and the digest the content must have: one struct, flattened into each, so that they
/// cannot drift apart.
#[derive(Deserialize, JsonSchema)]
pub struct Sources {
    /// `http://`, `https://` or `s3://bucket/key` (templates allowed).
    #[serde(default)]
    pub url: Option<String>,
    /// A local file, inside the lab's `artifact_roots` or the job file's directory.
    #[serde(default)]
    pub file: Option<String>,
    /// The content itself.
    #[serde(default)]
    pub data: Option<String>,
    /// A file an earlier run of a job uploaded: the newest successful run's, or `run:`'s.
    #[serde(default)]
    pub result: Option<ResultSource>,
    /// The digest the content must have (64 hex digits, `sha256:` prefix allowed).
    #[serde(default)]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

/// `result:`: a file of a run of the lab's own job.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultSource {
    /// The job's name (templates allowed).
    pub job: String,
    /// The file's path in the run (`images/bzImage`; templates allowed).
    pub path: String,
    /// That run, not the newest successful one.
    #[serde(default)]
    pub run: Option<i64>,
    /// A file a DUT uploaded by its source address will do (by default only files uploaded
    /// with a token: a source address can be forged).
    #[serde(default)]
    pub untokened: Option<bool>,
}

/// `storage:`: files by space, and disks.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Files served over HTTP.
    #[serde(default)]
    pub http: Option<Vec<FileEntry>>,
    /// Files served over TFTP.
    #[serde(default)]
    pub tftp: Option<Vec<FileEntry>>,
    /// Block devices served over NBD.
    #[serde(default)]
    pub nbd: Option<Vec<DiskEntry>>,
}

/// A `storage.<space>[]` entry: its path and exactly one source.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = one_source)]
pub struct FileEntry {
    /// The path the DUT asks for (`/job/config.txt`).
    pub path: String,
    /// Where the content comes from.
    #[serde(flatten)]
    pub source: Sources,
    /// How long and how often it may be read.
    #[serde(default)]
    pub lifetime: Option<LifetimeFile>,
}

/// `lifetime:`
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifetimeFile {
    /// Reads allowed per boot (0: no limit).
    #[serde(default)]
    pub access_count: Option<u32>,
    /// The file disappears this long after the job was loaded (`12h`, `7 days`).
    #[serde(default)]
    pub expiration: Option<Dur>,
}

/// A `storage.nbd[]` entry: its name and exactly one content.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = one_disk_source)]
pub struct DiskEntry {
    /// Export name as NBD clients ask for it.
    pub name: String,
    /// Writes are refused.
    #[serde(default)]
    pub readonly: Option<bool>,
    /// A disk image by URL (raw, or qcow2 converted on preparation).
    #[serde(default)]
    pub url: Option<String>,
    /// A local disk image.
    #[serde(default)]
    pub file: Option<String>,
    /// The image's digest (only with `url` or `file`).
    #[serde(default)]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
    /// A filesystem created for the job.
    #[serde(default)]
    pub filesystem: Option<FilesystemFile>,
    /// A sparse, zero-filled disk.
    #[serde(default)]
    pub raw: Option<RawFile>,
    /// When the DUT's writes are thrown away.
    #[serde(default)]
    pub reset_on: Option<ResetOnFile>,
    /// Every DUT of the lab may attach it, not only the job's own.
    #[serde(default)]
    pub shared: Option<bool>,
    /// Remove the prepared disk when no job asked for it in this long.
    #[serde(default)]
    pub expiration: Option<Dur>,
}

/// `reset_on:`
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetOnFile {
    /// At every `boot` event.
    Boot,
    /// At every `job_start` event (the default).
    JobStart,
    /// Never.
    Never,
}

/// `filesystem:`: at most one of `data` (a tarball) and `container`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {"required": ["data", "container"]}))]
pub struct FilesystemFile {
    /// `ext4` (others as `mkfs.<type>` allows).
    #[serde(rename = "type", default)]
    pub fstype: Option<String>,
    /// Its size (`20G`); required unless the content is a container image.
    #[serde(default)]
    pub size: Option<Size>,
    /// A tarball unpacked at the filesystem's root.
    #[serde(default)]
    pub data: Option<TarballFile>,
    /// A container image (`docker://...`), layers flattened.
    #[serde(default)]
    pub container: Option<String>,
}

/// `filesystem.data:`: exactly one source.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = one_tarball_source)]
pub struct TarballFile {
    /// `http://`, `https://` or `s3://bucket/key`.
    #[serde(default)]
    pub url: Option<String>,
    /// A local tarball.
    #[serde(default)]
    pub file: Option<String>,
    /// The tarball's expected SHA-256 (64 hex digits, optionally `sha256:`-prefixed): checked
    /// on fetch, and what lets another gateway take it from the shared store.
    #[serde(default)]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-fA-F]{64}$"))]
    pub sha256: Option<String>,
}

/// `raw:`
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Its size (`20G`).
    pub size: Size,
}

/// `schema` requires exactly one of `keys`.
fn exactly_one(schema: &mut Schema, keys: &[&str]) {
    let alternatives: Vec<serde_json::Value> = keys.iter().map(|k| serde_json::json!({ "required": [k] })).collect();
    schema.insert("oneOf".into(), alternatives.into());
}

fn one_source(schema: &mut Schema) {
    exactly_one(schema, SOURCE_KEYS)
}

fn one_disk_source(schema: &mut Schema) {
    exactly_one(schema, DISK_SOURCES)
}

fn one_tarball_source(schema: &mut Schema) {
    exactly_one(schema, TARBALL_KEYS)
}

/// The JSON Schema (draft 2020-12) of job files.
///
/// ```
/// let schema = citron_core::job::job_schema();
/// assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
/// assert_eq!(schema["additionalProperties"], false);
/// ```
pub fn job_schema() -> serde_json::Value {
    schema_of::<JobFile>()
}

/// The schema of `T` as citron's readers take it: an optional key is left out, never `null`
/// (the readers refuse `kernel: null` and its kin, and editors then complete the real type).
pub(crate) fn schema_of<T: JsonSchema>() -> serde_json::Value {
    let mut schema = schemars::schema_for!(T).to_value();
    no_null(&mut schema);
    schema
}

/// Takes `null` out of every schema: from `type` lists, `anyOf` alternatives (an `Option` of a
/// struct) and defaults (`default: null`, `{endpoint: null}`).
fn no_null(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Array(items) => items.iter_mut().for_each(no_null),
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [one] = types.as_slice() {
                    let one = one.clone();
                    map.insert("type".into(), one);
                }
            }
            if let Some(Value::Array(alts)) = map.get_mut("anyOf") {
                alts.retain(|a| a.get("type").is_none_or(|t| t != "null"));
                if let [Value::Object(one)] = alts.as_slice() {
                    let one = one.clone();
                    map.remove("anyOf");
                    map.extend(one);
                }
            }
            map.values_mut().for_each(no_null);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::lab::LabConfig;
    use crate::serve::Space;

    fn yaml_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
        v.sort();
        v
    }

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn errors(schema: &serde_json::Value, file: &Path) -> Vec<String> {
        let v = jsonschema::validator_for(schema).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        v.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path)).collect()
    }

    #[test]
    fn the_schemas_accept_every_example_and_good_file() {
        let (job, lab) = (job_schema(), LabConfig::schema());
        let mut files = yaml_files(&root().join("tests/data/good"));
        files.extend(yaml_files(&root().join("examples")));
        assert!(files.len() >= 8, "{files:?}");
        for f in files {
            let is_lab = f.file_name().unwrap().to_string_lossy().starts_with("lab");
            let errs = errors(if is_lab { &lab } else { &job }, &f);
            assert!(errs.is_empty(), "{}: {errs:?}", f.display());
        }
        let default_lab: serde_json::Value = serde_yaml::from_str(crate::lab::DEFAULT_LAB).unwrap();
        assert!(jsonschema::validator_for(&lab).unwrap().is_valid(&default_lab));
    }

    #[test]
    fn the_job_schema_rejects_what_the_reader_rejects_for_its_shape() {
        let job = job_schema();
        // Unknown keys, two sources, no source, a missing key, a wrong type, an unknown reset
        // point, an unsupported storage, a lab file given as a job.
        for name in ["unknown-field", "two-sources", "no-source", "missing-key", "wrong-type", "bad-reset-on", "s3-nfs-tbd", "not-a-job"] {
            let f = root().join(format!("tests/data/bad/{name}.yaml"));
            assert!(!errors(&job, &f).is_empty(), "{name} passes the schema");
        }
        // The unknown key is named at its place.
        let errs = errors(&job, &root().join("tests/data/bad/unknown-field.yaml"));
        assert!(errs.iter().any(|e| e.contains("/deployment/start/kernel") && e.contains("urll")), "{errs:?}");
    }

    #[test]
    fn the_lab_schema_rejects_unknown_keys_and_bad_values() {
        let v = jsonschema::validator_for(&LabConfig::schema()).unwrap();
        let lab = |text: &str| serde_yaml::from_str::<serde_json::Value>(text).unwrap();
        assert!(v.is_valid(&lab("duts: [{id: a, ip: [127.0.0.2]}]\nlimits: {max_disk_size: 2T, header_timeout: 5s}\n")));
        assert!(!v.is_valid(&lab("dutz: []\n")));
        assert!(!v.is_valid(&lab("duts: [{id: a, colour: red}]\n")));
        assert!(!v.is_valid(&lab("limits: {max_disk_size: lots}\n")));
    }

    #[test]
    fn the_file_keys_the_reader_takes_are_the_schema_s() {
        let schema = job_schema();
        let keys = |def: &str| {
            let mut k: Vec<String> = schema["$defs"][def]["properties"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let sorted = |l: &[&str]| {
            let mut v: Vec<String> = l.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(keys("BootFile"), sorted(BOOT_FILE_KEYS));
        assert_eq!(keys("FileEntry"), sorted(FILE_ENTRY_KEYS));
        for def in ["BootFile", "FileEntry"] {
            assert_eq!(schema["$defs"][def]["additionalProperties"], false, "{def}");
            assert_eq!(schema["$defs"][def]["oneOf"].as_array().unwrap().len(), SOURCE_KEYS.len(), "{def}: exactly one source");
        }
    }

    #[test]
    fn storage_keys_are_the_file_spaces_and_nbd() {
        let mut want: Vec<&str> = Space::ALL.iter().map(|s| s.0).collect();
        want.push("nbd");
        assert_eq!(fields_of::<Storage>(), want.as_slice());
    }
}
