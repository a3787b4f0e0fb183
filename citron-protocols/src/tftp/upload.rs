//! One write transfer on its own socket: a DUT's TFTP `put` (tftp-hpa `put`, U-Boot's
//! `tftpput`) into its job's run.
//!
//! The core decides ([`Catalog::write`](citron_core::serve::Catalog::write): which DUT, which
//! run, how large); [`Receiver`] decides the protocol; this task moves datagrams and pieces
//! between them. The final ACK leaves only once the file is durable; a transfer that ends any
//! other way (an ERROR, silence, a refusal) keeps nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use citron_core::serve::{Protocol, WriteRequest};

use super::admission::Slot;
use super::error::error_packet;
use super::packet::{self, Clip, ErrorCode, Mode, Packet, Request};
use super::receive::{Failed, Receiver};
use super::server::{send_error, Shared};
use super::session::negotiate;
use super::sys::TransferSocket;

/// Receives the file `req` names from `peer` into the DUT's run.
pub(super) async fn receive(shared: Arc<Shared>, peer: SocketAddr, req: Request, req_len: usize, _slot: Slot) {
    let mut sock = match TransferSocket::open(shared.local_ip, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a TFTP transfer socket");
            return;
        }
    };
    let file = Clip(&req.filename, shared.config.logged_field_max);
    let mut out = BytesMut::new();
    if req.mode != Mode::Octet {
        let p = Packet::Error { code: ErrorCode::ILLEGAL_OPERATION, message: "uploads are taken in octet (binary) mode only".into() };
        send_error(&sock, &mut out, p, req_len).await;
        return;
    }
    // The size the client announces (RFC 2349): refused at once when over the bound, never
    // trusted beyond that.
    let tsize = req.options.iter().find(|(k, _)| k.eq_ignore_ascii_case("tsize")).and_then(|(_, v)| v.trim().parse::<u64>().ok());
    let wreq = WriteRequest { peer: peer.ip().to_canonical(), protocol: Protocol::TFTP, path: &req.filename, size: tsize };
    if let Some(wait) = shared.catalog.job_loading(wreq.peer) {
        wait.await;
    }
    let mut up = match shared.catalog.write(&wreq) {
        Ok(u) => u,
        Err(e) => {
            // The core wrote the access line.
            tracing::info!(%peer, %file, error = %Clip(&e.to_string(), shared.config.logged_field_max), "TFTP write refused");
            send_error(&sock, &mut out, error_packet(&e), req_len).await;
            return;
        }
    };
    // Lockstep: `windowsize` is not offered for writes.
    let opts =
        Request { options: req.options.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("windowsize")).cloned().collect(), ..req.clone() };
    let limits = &shared.config.limits;
    let neg = negotiate(&opts, tsize.unwrap_or(0), limits);
    let started = Instant::now();
    let (mut rx, mut step) = Receiver::start(&neg, limits.retries, started);
    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(step.wake_at.unwrap_or(started)));
    tokio::pin!(sleep);
    loop {
        if let Some(p) = step.send.take() {
            out.clear();
            packet::encode(&p, &mut out);
            if let Err(e) = sock.send(&out).await {
                tracing::debug!(%peer, error = %e, "TFTP send failed");
            }
        }
        if let Some(f) = step.failed.take() {
            match f {
                Failed::ClientError { code, message } => {
                    tracing::info!(%peer, %file, code = code.0, %message, "TFTP client aborted its upload: nothing kept")
                }
                Failed::TimedOut => tracing::warn!(%peer, %file, "TFTP client stopped sending; upload abandoned, nothing kept"),
                Failed::Oversized => tracing::info!(%peer, %file, "TFTP block over the negotiated blksize; upload refused, nothing kept"),
            }
            return;
        }
        if let Some(piece) = step.take.take() {
            if let Err(e) = up.write(piece).await {
                tracing::info!(%peer, %file, error = %e, "TFTP upload refused: nothing kept");
                send_error(&sock, &mut out, error_packet(&e), req_len).await;
                return;
            }
            if step.last {
                match up.finish().await {
                    Ok(w) => {
                        tracing::info!(%peer, %file, bytes = w.len, sha256 = %w.digest, elapsed = ?started.elapsed(), "TFTP upload kept");
                        dally(&mut sock, &mut out, &rx, neg.timeout * 2).await;
                    }
                    Err(e) => {
                        tracing::info!(%peer, %file, error = %e, "TFTP upload not kept");
                        send_error(&sock, &mut out, error_packet(&e), req_len).await;
                    }
                }
                return;
            }
        }
        if let Some(w) = step.wake_at {
            sleep.as_mut().reset(tokio::time::Instant::from_std(w));
        }
        step = tokio::select! {
            biased;
            r = sock.recv() => match r {
                Ok(datagram) => match packet::decode(datagram) {
                    Ok(p) => rx.on_packet(&p, Instant::now()),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "malformed packet in a transfer ignored");
                        Default::default()
                    }
                },
                // ICMP port unreachable: the client closed its socket.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(%peer, %file, "TFTP client went away mid-upload: nothing kept");
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TFTP receive failed");
                    Default::default()
                }
            },
            _ = &mut sleep => rx.on_timeout(Instant::now()),
        };
    }
}

/// Sends the final ACK, then answers a repeated last block with it again for `linger` (RFC
/// 1350 §6: the final ACK may be lost, and the client would resend its last block).
async fn dally(sock: &mut TransferSocket, out: &mut BytesMut, rx: &Receiver, linger: std::time::Duration) {
    let ack = rx.ack();
    out.clear();
    packet::encode(&ack, out);
    let _ = sock.send(out).await;
    let Packet::Ack { block } = ack else { return };
    let until = tokio::time::Instant::now() + linger;
    while let Ok(Ok(d)) = tokio::time::timeout_at(until, sock.recv()).await {
        if matches!(packet::decode(d), Ok(Packet::Data { block: b, .. }) if b == block) {
            let _ = sock.send(out).await;
        }
    }
}
