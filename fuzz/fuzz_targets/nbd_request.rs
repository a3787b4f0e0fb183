//! The NBD parsers on arbitrary bytes: requests, option headers, client flags and
//! `NBD_OPT_GO` data must answer (value, incomplete or error) without panicking, and a parsed
//! request must encode back to the same bytes.
//!   cargo +nightly fuzz run nbd_request -- -max_total_time=60
#![no_main]

use citron_protocols::nbd::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(r)) = wire::parse_request(data) {
        let mut out = Vec::new();
        wire::encode_request(&mut out, &r);
        assert_eq!(&out[..], &data[..wire::REQUEST_LEN]);
        let _ = r.payload_len();
    }
    let _ = wire::parse_option_header(data, 8192);
    let _ = wire::parse_client_flags(data);
    let _ = wire::parse_info_request(data);
});
