//! Any datagram: decoding never panics, and whatever decodes re-encodes to the same packet.
//! Requests also go through option negotiation and start a session, which must not panic.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use citron_protocols::tftp::packet::{decode, encode, Packet};
use citron_protocols::tftp::session::{negotiate, Limits, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pkt) = decode(data) else { return };
    let mut out = BytesMut::new();
    encode(&pkt, &mut out);
    assert_eq!(
        decode(&out).as_ref(),
        Ok(&pkt),
        "re-encoding changed the packet"
    );
    if let Packet::Rrq(req) = &pkt {
        let size = data.len() as u64 * 1000;
        let n = negotiate(req, size, &Limits::default());
        assert!(n.blksize >= 8 && n.blksize <= 65464 && n.windowsize >= 1);
        let now = Instant::now();
        let (mut s, _) = Session::start(n, size, 3, now);
        // Feed the request's own bytes back as ACKs of every block number they spell.
        for w in data.chunks(2) {
            let block = u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]);
            let _ = s.on_packet(&Packet::Ack { block }, now);
        }
        let _ = s.on_timeout(now + std::time::Duration::from_secs(300));
    }
});
