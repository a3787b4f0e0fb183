//! The fixed-newstyle negotiation: greeting, client flags, options until `NBD_OPT_GO` or
//! `NBD_OPT_EXPORT_NAME` chooses an export.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use citron_core::serve::{Catalog, Export, ExportInfo, Protocol, ServeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::slots::{DutSlots, Slot};
use super::wire::{self, info, opt, rep, tflag};
use super::{nbd_error, MAX_PAYLOAD};

/// Longest option data citron reads: a 4096-byte name plus a few information requests.
const MAX_OPTION_LEN: u32 = 8192;

/// What the negotiation agreed on.
pub(crate) struct Negotiated {
    /// The export chosen.
    pub export: Export,
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged: reads answer with structured chunks.
    pub structured: bool,
    /// This connection's place among its DUT's (`limits.nbd_connections_per_dut`).
    pub slot: Slot,
}

/// The option reply's text when a DUT has all its connections open.
const TOO_MANY: &str = "too many NBD connections from this DUT (limits.nbd_connections_per_dut); close one first";

/// The transmission flags for an export.
pub(crate) fn transmission_flags(info: &ExportInfo) -> u16 {
    let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN;
    if info.readonly {
        f |= tflag::READ_ONLY;
    } else {
        f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
    }
    f
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Resolves the empty name ("the default export") to the DUT's first export.
fn resolve_name(catalog: &dyn Catalog, peer: IpAddr, name: &str) -> String {
    if name.is_empty() {
        if let Some(first) = catalog.exports(peer).into_iter().next() {
            return first.name;
        }
    }
    name.to_string()
}

/// What `NBD_OPT_INFO` says about `name`: its entry in `peer`'s listing, which holds exactly the
/// exports `peer` may open. Names it may not see answer like names that do not exist.
fn describe(catalog: &dyn Catalog, peer: IpAddr, name: &str) -> Result<ExportInfo, ServeError> {
    catalog.exports(peer).into_iter().find(|e| e.name == name).ok_or_else(|| {
        tracing::info!(%peer, export = %name, "NBD_OPT_INFO for an export this peer may not see");
        ServeError::NotFound(name.to_string())
    })
}

/// Runs the negotiation. `Ok(None)`: the client ended it (abort, unknown export with
/// `NBD_OPT_EXPORT_NAME`); `Err`: I/O error or a client breaking the protocol.
pub(crate) async fn negotiate(
    s: &mut TcpStream,
    peer: IpAddr,
    catalog: &dyn Catalog,
    slots: &Arc<DutSlots>,
) -> io::Result<Option<Negotiated>> {
    let mut out = Vec::with_capacity(64);
    wire::encode_greeting(&mut out);
    s.write_all(&out).await?;
    let mut f = [0u8; 4];
    s.read_exact(&mut f).await?;
    let flags = wire::parse_client_flags(&f).map_err(invalid)?.unwrap_or_default();
    let zeroes = flags & wire::CLIENT_NO_ZEROES == 0;
    let mut structured = false;
    loop {
        let mut hdr = [0u8; wire::OPTION_HEADER_LEN];
        s.read_exact(&mut hdr).await?;
        let h = wire::parse_option_header(&hdr, MAX_OPTION_LEN).map_err(invalid)?.unwrap_or(wire::OptionHeader { option: 0, len: 0 });
        let mut data = vec![0u8; h.len as usize];
        s.read_exact(&mut data).await?;
        out.clear();
        match h.option {
            opt::EXPORT_NAME => {
                let name = std::str::from_utf8(&data).map_err(invalid)?;
                let name = resolve_name(catalog, peer, name);
                // This option has no error reply: a refusal closes the connection.
                let Some(slot) = slots.take(peer) else { return Ok(None) };
                match catalog.open_export(peer, Protocol::NBD, &name) {
                    Ok(export) => {
                        wire::encode_export_name_reply(&mut out, export.info.size, transmission_flags(&export.info), zeroes);
                        s.write_all(&out).await?;
                        return Ok(Some(Negotiated { export, structured, slot }));
                    }
                    Err(e) => {
                        tracing::info!(%peer, export = %name, error = %e, "NBD_OPT_EXPORT_NAME refused; closing");
                        return Ok(None);
                    }
                }
            }
            opt::ABORT => {
                wire::encode_option_reply(&mut out, h.option, rep::ACK, &[]);
                let _ = s.write_all(&out).await;
                return Ok(None);
            }
            opt::LIST if !data.is_empty() => {
                wire::encode_option_reply(&mut out, h.option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data");
            }
            opt::LIST => {
                for e in catalog.exports(peer) {
                    wire::encode_list_entry(&mut out, &e.name, &e.description);
                }
                wire::encode_option_reply(&mut out, h.option, rep::ACK, &[]);
            }
            opt::INFO | opt::GO => match wire::parse_info_request(&data) {
                None => wire::encode_option_reply(&mut out, h.option, rep::ERR_INVALID, b"malformed NBD_OPT_INFO/GO data"),
                Some(req) => {
                    let name = resolve_name(catalog, peer, &req.name);
                    // INFO only describes: the export is not opened (no overlay is created, no
                    // access is logged). The listing applies the same rules as opening.
                    let mut slot = None;
                    let found = if h.option == opt::GO {
                        slot = slots.take(peer);
                        match slot {
                            Some(_) => catalog.open_export(peer, Protocol::NBD, &name).map(|e| (e.info.clone(), Some(e))),
                            None => {
                                wire::encode_option_reply(&mut out, h.option, rep::ERR_POLICY, TOO_MANY.as_bytes());
                                s.write_all(&out).await?;
                                continue;
                            }
                        }
                    } else {
                        describe(catalog, peer, &name).map(|i| (i, None))
                    };
                    match found {
                        Err(e) => {
                            let msg = e.to_string();
                            wire::encode_option_reply(&mut out, h.option, nbd_error(&e).rep, msg.as_bytes());
                        }
                        Ok((i, export)) => {
                            wire::encode_info_export(&mut out, h.option, i.size, transmission_flags(&i));
                            for r in &req.requests {
                                match *r {
                                    info::NAME => wire::encode_info_string(&mut out, h.option, info::NAME, &i.name),
                                    info::DESCRIPTION => wire::encode_info_string(&mut out, h.option, info::DESCRIPTION, &i.description),
                                    info::BLOCK_SIZE => wire::encode_info_block_size(&mut out, h.option, 1, 4096, MAX_PAYLOAD),
                                    _ => {}
                                }
                            }
                            wire::encode_option_reply(&mut out, h.option, rep::ACK, &[]);
                            if let (Some(export), Some(slot)) = (export, slot) {
                                s.write_all(&out).await?;
                                return Ok(Some(Negotiated { export, structured, slot }));
                            }
                        }
                    }
                }
            },
            opt::STRUCTURED_REPLY if !data.is_empty() => {
                wire::encode_option_reply(&mut out, h.option, rep::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data");
            }
            opt::STRUCTURED_REPLY => {
                structured = true;
                wire::encode_option_reply(&mut out, h.option, rep::ACK, &[]);
            }
            other => {
                let msg = format!("option {other} is not supported by citron");
                wire::encode_option_reply(&mut out, other, rep::ERR_UNSUP, msg.as_bytes());
            }
        }
        s.write_all(&out).await?;
    }
}
