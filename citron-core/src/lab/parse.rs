//! Lab file text → [`LabConfig`], through the positioned reader job files use.
//!
//! Each top-level key is read on its own, and the sections that are structs themselves
//! (`duts[]`, `cache`, `s3`, `store`, `limits`) key by key, so that one run reports every problem. Then
//! the lab's own rules, which serde cannot state, are checked on the same nodes.

use std::collections::{BTreeMap, HashMap};

use crate::artifact::{S3Config, StoreConfig};
use crate::limits::Limits;
use crate::namespace::{Dut, DutRegistry, RegistryError};
use crate::yaml::de::{child, fields_of, Problem, Reader};
use crate::yaml::{Document, Node, NodeKind, Pos, Scalar};

use super::{valid_api_host, CacheSettings, DutKind, GatewaySettings, LabConfig, PoolSettings, ResultsSettings, TenantQuota};

/// Parses a lab file; on failure, every problem found, in document order.
pub(super) fn parse(text: &str) -> Result<LabConfig, Vec<Problem>> {
    let doc = match Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let pos = Pos { line: e.line, col: e.column };
            return Err(vec![Problem { pos, field: "<document>".into(), message: e.message }]);
        }
    };
    // An empty file (or one with only comments) is a lab with every default.
    let Some(root) = doc.root.as_ref() else { return Ok(LabConfig::default()) };
    let mut r = Reader::default();
    let Some(entries) = r.entries(root, "", fields_of::<LabConfig>()) else { return Err(r.problems) };
    for &(k, v) in &entries {
        match k.value.as_str() {
            "duts" => duts(&mut r, v),
            "cache" => cache(&mut r, v),
            "s3" => {
                let _ = r.fields::<S3Config>(v, "s3");
            }
            "store" => store(&mut r, v),
            "limits" => {
                let _ = r.fields::<Limits>(v, "limits");
            }
            "gateways" => gateways(&mut r, v),
            "pool" => pool(&mut r, v),
            "tenants" => tenants(&mut r, v),
            "results" => results(&mut r, v),
            "variables" => variables(&mut r, v),
            "api_hosts" => api_hosts(&mut r, v),
            _ => r.field_alone::<LabConfig>(k, v, ""),
        }
    }
    let lab = if r.problems.is_empty() { r.whole::<LabConfig>(root.pos, entries, "") } else { None };
    let mut problems = r.problems;
    match lab {
        Some(lab) if problems.is_empty() => Ok(lab),
        _ => {
            problems.sort_by_key(|p| p.pos);
            Err(problems)
        }
    }
}

/// The value of `key` in the mapping `node`, with its key.
fn entry<'n>(node: &'n Node, key: &str) -> Option<(&'n Scalar, &'n Node)> {
    let NodeKind::Map(entries) = &node.kind else { return None };
    entries.iter().find(|(k, _)| k.value == key).map(|(k, v)| (k, v))
}

/// `duts:`: each DUT key by key, then one DUT per id and per address (requests are told apart
/// by their source address).
fn duts(r: &mut Reader, node: &Node) {
    let NodeKind::Seq(items) = &node.kind else {
        r.err(node.pos, "duts", format!("expected a list of DUTs (each starting with `- id: ...`), found {}", node.describe()));
        return;
    };
    let mut ids: HashMap<String, Pos> = HashMap::new();
    let mut addrs: HashMap<std::net::IpAddr, (Pos, String)> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("duts[{i}]");
        let Some(dut) = r.fields::<Dut>(item, &field) else { continue };
        let id_pos = entry(item, "id").map_or(item.pos, |(_, v)| v.pos);
        pool_keys(r, item, &field, &dut);
        // The registry's own rule for ids, checked here for its position.
        if let Err(e @ RegistryError::BadId(_)) = DutRegistry::default().add(Dut { ip: Vec::new(), ..dut.clone() }) {
            r.err(id_pos, &child(&field, "id"), e.to_string());
        }
        if let Some(first) = ids.get(&dut.id.0) {
            let msg = format!("a DUT with id `{}` is already defined at line {}; give each DUT its own id", dut.id.0, first.line);
            r.err(id_pos, &child(&field, "id"), msg);
        } else {
            ids.insert(dut.id.0.clone(), id_pos);
        }
        let ip_nodes: &[Node] = match entry(item, "ip").map(|(_, v)| &v.kind) {
            Some(NodeKind::Seq(n)) => n,
            _ => &[],
        };
        for (j, ip) in dut.ip.iter().enumerate() {
            let pos = ip_nodes.get(j).map_or(item.pos, |n| n.pos);
            if let Some((first, owner)) = addrs.get(ip) {
                let msg =
                    format!("address {ip} already belongs to DUT `{owner}` (line {}); every DUT needs its own source address", first.line);
                r.err(pos, &format!("{field}.ip[{j}]"), msg);
            } else {
                addrs.insert(*ip, (pos, dut.id.0.clone()));
            }
        }
    }
}

/// `cache:`, whose `max_size` takes `20G`-style sizes.
fn cache(r: &mut Reader, node: &Node) {
    let Some(c) = r.fields::<CacheSettings>(node, "cache") else { return };
    if let (Some(s), Some((_, v))) = (&c.max_size, entry(node, "max_size")) {
        if let Err(e) = crate::units::parse_size(s) {
            r.err(v.pos, "cache.max_size", e);
        }
    }
}

/// `variables:`: strings by name; `machine_id` is each DUT's own, so it is refused here (one
/// value for the whole lab would give every DUT the same boot paths). The endpoint variables
/// may be overridden.
fn variables(r: &mut Reader, node: &Node) {
    if r.value::<BTreeMap<String, String>>(node, "variables").is_none() {
        return;
    }
    if let Some((k, _)) = entry(node, "machine_id") {
        let msg = "`machine_id` is set per DUT (its `machine_id:` or `id:`), not in `variables`; remove it";
        r.err(k.pos, "variables.machine_id", msg);
    }
}

/// `api_hosts:`: each a host name or `host:port`, as a `Host` header names the API.
fn api_hosts(r: &mut Reader, node: &Node) {
    let Some(hosts) = r.value::<Vec<String>>(node, "api_hosts") else { return };
    let NodeKind::Seq(items) = &node.kind else { return };
    for (i, (h, n)) in hosts.iter().zip(items).enumerate() {
        if !valid_api_host(h) {
            r.err(n.pos, &format!("api_hosts[{i}]"), format!("{h:?} is not a host name or host:port"));
        }
    }
}

/// `gateways:`: a `heartbeat_timeout` of zero would mark every gateway offline at once.
fn gateways(r: &mut Reader, node: &Node) {
    let Some(g) = r.fields::<GatewaySettings>(node, "gateways") else { return };
    if let (true, Some((_, v))) = (g.heartbeat_timeout.get().is_zero(), entry(node, "heartbeat_timeout")) {
        r.err(v.pos, "gateways.heartbeat_timeout", "must be more than 0s (a gateway heartbeats three times per timeout)");
    }
}

/// `store:`: its keys, then its URL (`s3://bucket/prefix`, no credentials in it).
fn store(r: &mut Reader, node: &Node) {
    let Some(store) = r.fields::<StoreConfig>(node, "store") else { return };
    if let Err(message) = store.bucket_and_prefix() {
        let pos = entry(node, "url").map_or(node.pos, |(_, v)| v.pos);
        r.err(pos, "store.url", message);
    }
}

/// A DUT's pool keys, beyond what their types check: `vm:` only on a `kind: vm` DUT, `power:`
/// only on a `baremetal` one (citron powers its VMs itself), a power timeout above zero.
fn pool_keys(r: &mut Reader, item: &Node, field: &str, dut: &Dut) {
    let at = |key: &str| entry(item, key).map_or(item.pos, |(k, _)| k.pos);
    if dut.vm.is_some() && dut.kind != DutKind::Vm {
        r.err(at("vm"), &child(field, "vm"), "`vm:` describes a `kind: vm` DUT; add `kind: vm` or remove `vm:`");
    }
    if let Some(p) = &dut.power {
        if dut.kind == DutKind::Vm {
            r.err(at("power"), &child(field, "power"), "a `kind: vm` DUT is powered by citron itself; remove `power:`");
        }
        if p.timeout.get().is_zero() {
            let pos = entry(item, "power").and_then(|(_, v)| entry(v, "timeout")).map_or(at("power"), |(_, v)| v.pos);
            r.err(pos, &format!("{field}.power.timeout"), "must be more than 0s: a power command that may hang forever would hold the DUT");
        }
    }
}

/// `pool:`: lifetimes above zero, the default within the maximum.
fn pool(r: &mut Reader, node: &Node) {
    let Some(p) = r.fields::<PoolSettings>(node, "pool") else { return };
    let pos = |key: &str| entry(node, key).map_or(node.pos, |(_, v)| v.pos);
    if p.max_lifetime.get().is_zero() {
        r.err(pos("max_lifetime"), "pool.max_lifetime", "must be more than 0s");
    }
    if p.default_lifetime.get().is_zero() || p.default_lifetime > p.max_lifetime {
        let msg = format!("must be more than 0s and at most pool.max_lifetime ({})", p.max_lifetime);
        r.err(pos("default_lifetime"), "pool.default_lifetime", msg);
    }
}

/// `results:`: a salt of at most 256 characters, none of them control characters.
fn results(r: &mut Reader, node: &Node) {
    let Some(s) = r.fields::<ResultsSettings>(node, "results") else { return };
    if s.salt.chars().count() > 256 || s.salt.chars().any(char::is_control) {
        let pos = entry(node, "salt").map_or(node.pos, |(_, v)| v.pos);
        r.err(pos, "results.salt", "must have at most 256 characters and no control characters (any text: `salt: \"2\"`)");
    }
}

/// `tenants:`: each a tenant name with its quota.
fn tenants(r: &mut Reader, node: &Node) {
    let NodeKind::Map(entries) = &node.kind else {
        r.err(
            node.pos,
            "tenants",
            format!("expected a mapping of tenant names to quotas ({{max_duts, max_lifetime, max_priority}}), found {}", node.describe()),
        );
        return;
    };
    for (k, v) in entries {
        let field = child("tenants", &k.value);
        let name_ok = !k.value.is_empty()
            && k.value.len() <= 128
            && !k.value.starts_with('.')
            && k.value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            r.err(
                k.pos,
                &field,
                format!("{:?} is not a tenant name: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'", k.value),
            );
        }
        if let Some(q) = r.fields::<TenantQuota>(v, &field) {
            if q.max_lifetime.is_some_and(|l| l.get().is_zero()) {
                let pos = entry(v, "max_lifetime").map_or(v.pos, |(_, v)| v.pos);
                r.err(pos, &child(&field, "max_lifetime"), "must be more than 0s");
            }
        }
    }
}
