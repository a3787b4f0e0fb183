//! The transmission machine driven with byte vectors.

use super::*;
use crate::nbd::wire::{Request, IHAVEOPT, SIMPLE_REPLY_MAGIC};

fn req(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = Vec::new();
    wire::encode_request(&mut v, &Request { flags, kind, cookie, offset, len });
    v
}

fn write(cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut v = req(cmd::WRITE, 0, cookie, offset, data.len() as u32);
    v.extend_from_slice(data);
    v
}

/// Simple replies in `out`: (error, cookie).
fn simple_replies(out: &[u8]) -> Vec<(u32, u64)> {
    out.chunks(wire::SIMPLE_REPLY_LEN)
        .map(|r| {
            assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), SIMPLE_REPLY_MAGIC);
            (u32::from_be_bytes(r[4..8].try_into().unwrap()), u64::from_be_bytes(r[8..16].try_into().unwrap()))
        })
        .collect()
}

#[test]
fn requests_come_out_as_commands_and_partial_input_waits() {
    let mut t = Transmission::new(false, 1 << 20);
    let mut out = Vec::new();
    let mut bytes = write(7, 4096, b"citron");
    bytes.extend(req(cmd::READ, cflag::FUA, 8, 0, 512));
    let mut input = BytesMut::new();
    // Header in pieces, then the payload in pieces: nothing before the whole write is there.
    for b in &bytes[..wire::REQUEST_LEN + 5] {
        input.extend_from_slice(&[*b]);
        assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait));
    }
    assert!(input.capacity() >= wire::REQUEST_LEN + 6, "room for the payload reserved");
    input.extend_from_slice(&bytes[wire::REQUEST_LEN + 5..]);
    let Ok(Next::Run(w)) = t.next(&mut input, &mut out) else { panic!("write") };
    assert_eq!(w, Command { op: Op::Write(Bytes::from_static(b"citron")), cookie: 7, offset: 4096, len: 6, fua: false, cost: 6 });
    let Ok(Next::Run(r)) = t.next(&mut input, &mut out) else { panic!("read") };
    assert_eq!((r.op, r.cookie, r.len, r.fua, r.cost), (Op::Read, 8, 512, true, 512));
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait));
    assert!(input.is_empty() && out.is_empty());
    assert!(t.busy());
    t.finished(6);
    t.finished(512);
    assert!(!t.busy());
}

#[test]
fn protocol_refusals_are_answered_here_and_the_rest_goes_on() {
    let mut t = Transmission::new(false, 1 << 20);
    let mut out = Vec::new();
    let mut bytes = req(cmd::READ, 0x8000, 1, 0, 1);
    bytes.extend(req(42, 0, 2, 0, 0));
    bytes.extend(req(cmd::READ, 0, 3, 0, MAX_PAYLOAD + 1));
    bytes.extend(req(cmd::FLUSH, 0, 4, 0, 0));
    let mut input = BytesMut::from(&bytes[..]);
    let Ok(Next::Run(f)) = t.next(&mut input, &mut out) else { panic!("flush") };
    assert_eq!((f.op, f.cookie, f.cost), (Op::Flush, 4, 0));
    assert_eq!(simple_replies(&out), vec![(errno::EINVAL, 1), (errno::EINVAL, 2), (errno::EINVAL, 3)]);
}

#[test]
fn ranges_are_not_checked_here() {
    // A read past any disk's end is the export's to refuse (the core decides).
    let mut t = Transmission::new(false, 1 << 20);
    let mut out = Vec::new();
    let mut input = BytesMut::from(&req(cmd::WRITE_ZEROES, 0, 1, u64::MAX, u32::MAX)[..]);
    let Ok(Next::Run(c)) = t.next(&mut input, &mut out) else { panic!("passed on") };
    assert_eq!((c.op, c.offset, c.len, c.cost), (Op::WriteZeroes, u64::MAX, u32::MAX, 0));
}

#[test]
fn structured_error_replies_carry_the_message() {
    let mut t = Transmission::new(true, 1 << 20);
    let mut out = Vec::new();
    assert!(t.structured());
    let mut input = BytesMut::from(&req(9, 0, 5, 0, 0)[..]);
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait));
    let msg = b"unknown command 9";
    assert_eq!(out.len(), 20 + 6 + msg.len());
    assert_eq!(&out[8..16], &5u64.to_be_bytes());
    assert_eq!(&out[20..24], &errno::EINVAL.to_be_bytes());
    assert_eq!(&out[26..], msg);
}

#[test]
fn oversize_writes_bad_magic_and_negotiation_bytes_close() {
    let mut out = Vec::new();
    let mut t = Transmission::new(false, 1 << 20);
    let mut input = BytesMut::from(&req(cmd::WRITE, 0, 1, 0, MAX_PAYLOAD + 1)[..]);
    assert_eq!(t.next(&mut input, &mut out), Err(TransmissionError::WriteTooLarge(MAX_PAYLOAD + 1)));
    assert!(input.capacity() < MAX_PAYLOAD as usize, "nothing reserved for it");

    let mut t = Transmission::new(false, 1 << 20);
    let mut bad = req(cmd::READ, 0, 1, 0, 1);
    bad[0] ^= 1;
    assert!(matches!(t.next(&mut BytesMut::from(&bad[..]), &mut out), Err(TransmissionError::Wire(WireError::BadMagic(_)))));

    // An option sent after the negotiation ended.
    let mut t = Transmission::new(false, 1 << 20);
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&[0u8; 20]);
    assert!(matches!(t.next(&mut BytesMut::from(&opt[..]), &mut out), Err(TransmissionError::Wire(WireError::BadMagic(_)))));
}

#[test]
fn the_budget_holds_requests_in_the_socket_until_replies_leave() {
    let budget = 16384;
    let mut t = Transmission::new(false, budget);
    let mut out = Vec::new();
    let mut bytes = req(cmd::READ, 0, 1, 0, 10000);
    bytes.extend(req(cmd::READ, 0, 2, 0, 10000));
    let mut input = BytesMut::from(&bytes[..]);
    let Ok(Next::Run(a)) = t.next(&mut input, &mut out) else { panic!("first admitted") };
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait), "second over the budget");
    assert!(!t.wants_input(), "reading stops");
    assert_eq!(input.len(), wire::REQUEST_LEN, "the request stays unread");
    t.finished(a.cost);
    assert!(t.wants_input());
    // Its reply is now waiting in `out`: that counts too, so it must be written first.
    out.resize(10016, 0);
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Flush));
    out.clear();
    assert!(matches!(t.next(&mut input, &mut out), Ok(Next::Run(Command { cookie: 2, .. }))));
}

#[test]
fn one_request_is_always_admitted_even_over_the_budget() {
    let mut t = Transmission::new(false, 8192);
    let mut out = Vec::new();
    let mut input = BytesMut::from(&write(1, 0, &[7u8; 20000])[..]);
    assert!(matches!(t.next(&mut input, &mut out), Ok(Next::Run(Command { cost: 20000, .. }))));
}

#[test]
fn a_large_read_streams_after_everything_before_it() {
    let mut t = Transmission::new(false, 8192);
    assert_eq!(t.piece(), 4096);
    let mut out = Vec::new();
    let mut bytes = req(cmd::FLUSH, 0, 1, 0, 0);
    bytes.extend(req(cmd::READ, 0, 2, 0, 100_000));
    bytes.extend(req(cmd::FLUSH, 0, 3, 0, 0));
    let mut input = BytesMut::from(&bytes[..]);
    let Ok(Next::Run(f)) = t.next(&mut input, &mut out) else { panic!("flush") };
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait), "the flush is in flight");
    assert!(!t.wants_input());
    t.finished(f.cost);
    out.extend_from_slice(&[0u8; 16]);
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Flush), "the flush's reply goes first");
    out.clear();
    let Ok(Next::Stream(r)) = t.next(&mut input, &mut out) else { panic!("stream") };
    assert_eq!((r.cookie, r.len, r.cost), (2, 100_000, 0));
    assert!(matches!(t.next(&mut input, &mut out), Ok(Next::Run(Command { cookie: 3, .. }))));
}

#[test]
fn in_flight_requests_are_capped() {
    let mut t = Transmission::new(false, 1 << 20);
    let mut out = Vec::new();
    let bytes: Vec<u8> = (0..MAX_IN_FLIGHT as u64 + 1).flat_map(|i| req(cmd::READ, 0, i, 0, 1)).collect();
    let mut input = BytesMut::from(&bytes[..]);
    for _ in 0..MAX_IN_FLIGHT {
        assert!(matches!(t.next(&mut input, &mut out), Ok(Next::Run(_))));
    }
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait));
    assert!(!t.wants_input());
    t.finished(1);
    assert!(matches!(t.next(&mut input, &mut out), Ok(Next::Run(Command { cookie: 16, .. }))));
}

#[test]
fn disconnect_finishes_what_is_in_flight_and_reads_nothing_more() {
    let mut t = Transmission::new(false, 1 << 20);
    let mut out = Vec::new();
    let mut bytes = req(cmd::WRITE_ZEROES, 0, 1, 0, 4096);
    bytes.extend(req(cmd::DISC, 0, 2, 0, 0));
    bytes.extend(req(cmd::FLUSH, 0, 3, 0, 0));
    let mut input = BytesMut::from(&bytes[..]);
    let Ok(Next::Run(z)) = t.next(&mut input, &mut out) else { panic!("zeroes") };
    assert_eq!(t.next(&mut input, &mut out), Ok(Next::Wait));
    assert!(!t.done() && !t.wants_input());
    t.finished(z.cost);
    assert!(t.done());
    assert_eq!(input.len(), wire::REQUEST_LEN, "nothing after DISC is served");
    assert!(out.is_empty(), "DISC has no reply");

    let mut t = Transmission::new(false, 1 << 20);
    t.on_eof();
    assert!(t.done());
}

#[test]
fn replies_have_the_shapes_of_the_protocol() {
    let mut v = vec![0u8; read_header_len(false) + 4];
    put_read_header(&mut v, false, 9, 0, 4);
    assert_eq!(simple_replies(&v[..16]), vec![(0, 9)]);
    assert_eq!(read_header_len(true), wire::STRUCTURED_READ_LEN);
    assert_eq!(simple_replies(&done_reply(false, 3, Ok(()))), vec![(0, 3)]);
    let e = done_reply(false, 4, Err(BlockError::NoSpace("past the end".into())));
    assert_eq!(simple_replies(&e), vec![(errno::ENOSPC, 4)]);
    let s = done_reply(true, 4, Err(BlockError::ReadOnly("d".into())));
    assert_eq!(&s[20..24], &errno::EPERM.to_be_bytes());
}
