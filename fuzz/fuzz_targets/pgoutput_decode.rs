//! Arbitrary bytes into the pgoutput decoder. Input: one selector byte (protocol version, parallel streaming,
//! in-stream; see `encode::split_fuzz_input`), then one message.
//!
//! Fails on: any panic in `decode` or in an error's `Display`, and any accepted input that the encoder does not write
//! back byte for byte (the decoder is meant to be canonical: one message, one encoding).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outbox_relay::pg::pgoutput::{Decoder, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Some((options, in_stream, message)) = encode::split_fuzz_input(data) else {
        return;
    };
    let bytes = Bytes::copy_from_slice(message);
    match decode(&bytes, options, in_stream) {
        Ok(m) => {
            assert_eq!(encode::encode(&m), bytes, "not canonical: {m:?}");
            // The stateful decoder agrees when its state matches.
            let mut d = Decoder::new(options);
            if in_stream {
                let start = Bytes::from_static(&[b'S', 0, 0, 0, 1, 1]);
                assert!(d.decode(&start).is_ok());
            }
            assert_eq!(d.decode(&bytes), Ok(m));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
