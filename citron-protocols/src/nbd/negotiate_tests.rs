//! The negotiation driven with byte vectors: what a client sends in, what citron answers out.

use super::*;
use crate::nbd::wire::{IHAVEOPT, REPLY_MAGIC};

/// The core's side, faked: one export "disk"; every name asked for is recorded.
#[derive(Default)]
struct Fake {
    asked: Vec<String>,
    opened: usize,
}

fn disk() -> ExportInfo {
    ExportInfo { name: "disk".into(), description: "raw".into(), size: 1 << 20, readonly: false }
}

impl Exports for Fake {
    type Open = &'static str;
    fn list(&mut self) -> Vec<ExportInfo> {
        vec![disk()]
    }
    fn describe(&mut self, name: &str) -> Result<ExportInfo, Refusal> {
        self.asked.push(name.to_string());
        if name == "disk" {
            Ok(disk())
        } else {
            Err(Refusal { rep: rep::ERR_UNKNOWN, message: format!("not found: {name}") })
        }
    }
    fn open(&mut self, name: &str) -> Result<(ExportInfo, &'static str), Refusal> {
        let i = self.describe(name)?;
        self.opened += 1;
        Ok((i, "opened"))
    }
}

fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// Splits `out` into option replies: (option, reply type, data).
fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert_eq!(u64::from_be_bytes(out[..8].try_into().unwrap()), REPLY_MAGIC);
        let o = u32::from_be_bytes(out[8..12].try_into().unwrap());
        let t = u32::from_be_bytes(out[12..16].try_into().unwrap());
        let n = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        v.push((o, t, out[20..20 + n].to_vec()));
        out = &out[20 + n..];
    }
    v
}

/// Starts a negotiation past the greeting and the client flags (no zeroes).
fn started() -> (Negotiation, Fake, Vec<u8>) {
    let mut out = Vec::new();
    let mut n = Negotiation::start(&mut out);
    assert_eq!(out.len(), wire::SERVER_GREETING_LEN);
    assert_eq!(&out[..8], b"NBDMAGIC");
    assert_eq!(&out[8..16], b"IHAVEOPT");
    out.clear();
    let mut fake = Fake::default();
    let mut input = BytesMut::from(&[0u8, 0, 0, 3][..]);
    assert_eq!(n.on_input(&mut input, &mut fake, &mut out), Ok(Progress::More));
    assert!(out.is_empty() && input.is_empty());
    (n, fake, out)
}

fn feed(n: &mut Negotiation, fake: &mut Fake, out: &mut Vec<u8>, bytes: &[u8]) -> Result<Progress<&'static str>, NegotiationError> {
    n.on_input(&mut BytesMut::from(bytes), fake, out)
}

#[test]
fn go_opens_and_answers_info_then_ack() {
    let (mut n, mut fake, mut out) = started();
    let mut msg = option(opt::STRUCTURED_REPLY, &[]);
    msg.extend(option(opt::GO, &info_data("disk", &[info::NAME, info::BLOCK_SIZE, 99])));
    let p = feed(&mut n, &mut fake, &mut out, &msg).unwrap();
    assert_eq!(p, Progress::Chosen { export: "opened", structured: true });
    let r = replies(&out);
    assert_eq!(r[0], (opt::STRUCTURED_REPLY, rep::ACK, vec![]));
    let mut export = info::EXPORT.to_be_bytes().to_vec();
    export.extend_from_slice(&(1u64 << 20).to_be_bytes());
    export.extend_from_slice(&transmission_flags(&disk()).to_be_bytes());
    assert_eq!(r[1], (opt::GO, rep::INFO, export));
    assert_eq!(r[2], (opt::GO, rep::INFO, [&info::NAME.to_be_bytes()[..], b"disk"].concat()));
    assert_eq!(r[3].2.len(), 14, "block size");
    assert_eq!(r[4], (opt::GO, rep::ACK, vec![]), "unknown NBD_INFO_* are ignored");
    assert_eq!(r.len(), 5);
    assert_eq!(fake.opened, 1);
    // Nothing more is accepted.
    assert_eq!(feed(&mut n, &mut fake, &mut out, &option(opt::LIST, &[])), Err(NegotiationError::Finished));
}

#[test]
fn bytes_arriving_one_at_a_time_give_the_same_answer() {
    let (mut n, mut fake, mut out) = started();
    let msg = option(opt::GO, &info_data("disk", &[]));
    let mut input = BytesMut::new();
    for (i, b) in msg.iter().enumerate() {
        input.extend_from_slice(&[*b]);
        let p = n.on_input(&mut input, &mut fake, &mut out).unwrap();
        if i + 1 < msg.len() {
            assert_eq!(p, Progress::More);
            assert!(out.is_empty());
        } else {
            assert_eq!(p, Progress::Chosen { export: "opened", structured: false });
        }
    }
}

#[test]
fn the_default_export_is_left_to_the_core() {
    let (mut n, mut fake, mut out) = started();
    feed(&mut n, &mut fake, &mut out, &option(opt::INFO, &info_data("", &[]))).unwrap();
    assert_eq!(fake.asked, vec![""], "the empty name is passed on, not resolved here");
    assert_eq!(replies(&out)[0].1, rep::ERR_UNKNOWN);
    assert_eq!(fake.opened, 0, "INFO opens nothing");
}

#[test]
fn refusals_and_unknown_options_answer_and_go_on() {
    let (mut n, mut fake, mut out) = started();
    let mut msg = option(opt::GO, &info_data("other", &[]));
    msg.extend(option(42, b"junk"));
    msg.extend(option(opt::LIST, b"x"));
    msg.extend(option(opt::STRUCTURED_REPLY, b"x"));
    msg.extend(option(opt::INFO, &[0xff, 0xff, 0xff, 0xff, 0, 0]));
    msg.extend(option(opt::LIST, &[]));
    assert_eq!(feed(&mut n, &mut fake, &mut out, &msg), Ok(Progress::More));
    let r = replies(&out);
    let kinds: Vec<(u32, u32)> = r.iter().map(|(o, t, _)| (*o, *t)).collect();
    assert_eq!(
        kinds,
        vec![
            (opt::GO, rep::ERR_UNKNOWN),
            (42, rep::ERR_UNSUP),
            (opt::LIST, rep::ERR_INVALID),
            (opt::STRUCTURED_REPLY, rep::ERR_INVALID),
            (opt::INFO, rep::ERR_INVALID),
            (opt::LIST, rep::SERVER),
            (opt::LIST, rep::ACK),
        ]
    );
    assert_eq!(r[0].2, b"not found: other");
    assert_eq!(&r[5].2[4..8], b"disk");
    // And the export can still be chosen.
    out.clear();
    let p = feed(&mut n, &mut fake, &mut out, &option(opt::EXPORT_NAME, b"disk")).unwrap();
    assert_eq!(p, Progress::Chosen { export: "opened", structured: false });
    assert_eq!(out.len(), 10, "size and flags, no zeroes: the client declined them");
}

#[test]
fn export_name_sends_zeroes_unless_declined_and_closes_on_refusal() {
    let mut out = Vec::new();
    let mut n = Negotiation::start(&mut out);
    out.clear();
    let mut fake = Fake::default();
    let mut msg = vec![0, 0, 0, 1];
    msg.extend(option(opt::EXPORT_NAME, b"disk"));
    assert_eq!(feed(&mut n, &mut fake, &mut out, &msg), Ok(Progress::Chosen { export: "opened", structured: false }));
    assert_eq!(out.len(), 8 + 2 + 124);

    let (mut n, mut fake, mut out) = started();
    assert_eq!(feed(&mut n, &mut fake, &mut out, &option(opt::EXPORT_NAME, b"nope")), Ok(Progress::Close));
    assert!(out.is_empty(), "NBD_OPT_EXPORT_NAME has no error reply");
    let (mut n, mut fake, mut out) = started();
    assert_eq!(feed(&mut n, &mut fake, &mut out, &option(opt::EXPORT_NAME, &[0xff, 0xfe])), Err(NegotiationError::NameNotUtf8));
}

#[test]
fn abort_is_acknowledged_and_closes() {
    let (mut n, mut fake, mut out) = started();
    let mut msg = option(opt::ABORT, &[]);
    msg.extend(option(opt::GO, &info_data("disk", &[])));
    assert_eq!(feed(&mut n, &mut fake, &mut out, &msg), Ok(Progress::Close));
    assert_eq!(replies(&out), vec![(opt::ABORT, rep::ACK, vec![])]);
    assert_eq!(fake.opened, 0, "nothing after ABORT is read");
}

#[test]
fn oversize_option_closes_before_buffering_it() {
    let (mut n, mut fake, mut out) = started();
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&opt::GO.to_be_bytes());
    hdr.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut input = BytesMut::from(&hdr[..]);
    assert_eq!(n.on_input(&mut input, &mut fake, &mut out), Err(WireError::OptionTooLarge(u32::MAX).into()));
    assert!(input.capacity() < 1 << 16, "no room reserved for the announced data");
    // The largest accepted length reserves only that much.
    let (mut n, mut fake, mut out) = started();
    let mut hdr = IHAVEOPT.to_be_bytes().to_vec();
    hdr.extend_from_slice(&opt::GO.to_be_bytes());
    hdr.extend_from_slice(&MAX_OPTION_LEN.to_be_bytes());
    let mut input = BytesMut::from(&hdr[..]);
    assert_eq!(n.on_input(&mut input, &mut fake, &mut out), Ok(Progress::More));
    assert!(input.capacity() >= wire::OPTION_HEADER_LEN + MAX_OPTION_LEN as usize);
}

#[test]
fn bad_magic_and_requests_before_negotiation_close() {
    let (mut n, mut fake, mut out) = started();
    let mut bad = option(opt::LIST, &[]);
    bad[0] ^= 0x80;
    assert!(matches!(feed(&mut n, &mut fake, &mut out, &bad), Err(NegotiationError::Wire(WireError::BadMagic(_)))));

    // A client that skips the negotiation and sends a read.
    let (mut n, mut fake, mut out) = started();
    let mut req = Vec::new();
    wire::encode_request(&mut req, &wire::Request { flags: 0, kind: wire::cmd::READ, cookie: 1, offset: 0, len: 512 });
    assert!(matches!(feed(&mut n, &mut fake, &mut out, &req), Err(NegotiationError::Wire(WireError::BadMagic(_)))));
    assert!(out.is_empty());
}

#[test]
fn unknown_client_flags_close() {
    let mut out = Vec::new();
    let mut n = Negotiation::start(&mut out);
    let mut fake = Fake::default();
    assert_eq!(feed(&mut n, &mut fake, &mut out, &[0, 0, 0, 8]), Err(WireError::BadClientFlags(8).into()));
}

#[test]
fn read_only_exports_advertise_no_writes() {
    let ro = ExportInfo { readonly: true, ..disk() };
    let f = transmission_flags(&ro);
    assert_ne!(f & tflag::READ_ONLY, 0);
    assert_eq!(f & (tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES), 0);
    assert_eq!(transmission_flags(&disk()) & tflag::READ_ONLY, 0);
}
