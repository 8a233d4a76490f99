use super::*;

/// A client frame: masked with a fixed key, RSV1 when `compressed`.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// What the inflater emits for a plain frame: masked with the zero key.
fn plain_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    put_header(&mut out, first, payload.len() as u64);
    out.put_slice(payload);
    out.to_vec()
}

/// Feeds `input` in pieces of `step` bytes, as a socket might deliver it.
fn run(inflater: &mut Inflater, input: &[u8], step: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = BytesMut::new();
    let mut pending = Vec::new();
    for piece in input.chunks(step) {
        pending.extend_from_slice(piece);
        let n = inflater.feed(&pending, &mut out)?;
        pending.drain(..n);
    }
    assert!(pending.is_empty(), "{} bytes left unread", pending.len());
    Ok(out.to_vec())
}

fn json(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..n {
        s.push_str(&format!(
            r#"{{"order":{i},"status":"shipped","carrier":"post","items":[{{"sku":"A-{i}","qty":1}}]}},"#
        ));
    }
    s.push(']');
    s.into_bytes()
}

#[test]
fn browsers_offers_are_accepted_with_the_full_window() {
    // Chrome's and Firefox's offer.
    let a = negotiate("permessage-deflate; client_max_window_bits").unwrap();
    assert_eq!(a.window_bits, 15);
    assert_eq!(
        a.response,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    let a = negotiate("permessage-deflate").unwrap();
    assert_eq!(a.window_bits, 15);
}

#[test]
fn a_smaller_server_window_is_kept_to() {
    let a = negotiate("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
        .unwrap();
    assert_eq!(a.window_bits, 9);
    assert!(
        a.response.ends_with("; server_max_window_bits=9"),
        "{}",
        a.response
    );
    let a = negotiate("permessage-deflate; server_max_window_bits=\"12\"").unwrap();
    assert_eq!(a.window_bits, 12);
}

#[test]
fn offers_fanfare_cannot_keep_are_declined_and_the_next_one_taken() {
    for bad in [
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; mystery",
        "x-webkit-deflate-frame",
        "",
    ] {
        assert_eq!(negotiate(bad), None, "{bad:?}");
    }
    let a = negotiate(
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=10",
    )
    .unwrap();
    assert_eq!(a.window_bits, 15);
}

#[test]
fn compress_round_trips_and_shrinks_json() {
    for payload in [Vec::new(), b"a".to_vec(), json(10), json(2000)] {
        for bits in [9, 15] {
            let c = compress(&payload, bits);
            let mut d = Decompress::new_with_window_bits(false, 15);
            let mut input = c.clone();
            input.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(payload.len() + 64);
            d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, payload, "window {bits}");
        }
    }
    let big = json(10);
    assert!(big.len() > 800);
    assert!(compress(&big, 15).len() * 100 <= big.len() * 40);
}

#[test]
fn a_compressed_message_comes_out_plain_whatever_the_read_boundaries() {
    let payload = json(20);
    let wire = client_frame(0xc1, &compress(&payload, 15));
    for step in [1, 3, 7, 64, wire.len()] {
        let mut i = Inflater::new(1 << 20);
        assert_eq!(
            run(&mut i, &wire, step).unwrap(),
            plain_frame(0x81, &payload),
            "step {step}"
        );
    }
}

#[test]
fn fragments_control_frames_and_plain_frames_keep_their_places() {
    let payload = json(30);
    let c = compress(&payload, 15);
    let (a, rest) = c.split_at(c.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    let mut wire = client_frame(0x42, a); // binary, RSV1, not final
    wire.extend(client_frame(0x89, b"hi")); // a ping in between
    wire.extend(client_frame(0x00, b)); // continuation
    wire.extend(client_frame(0x80, d)); // final continuation
    wire.extend(client_frame(0x81, b"plain")); // an uncompressed message
    let out = run(&mut Inflater::new(1 << 20), &wire, 5).unwrap();
    // Parse what came out: frames in order, with the payloads joined.
    let mut frames = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let first = out[at];
        let (len, hl) = match out[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([out[at + 2], out[at + 3]]) as usize, 4),
            127 => unreachable!(),
            n => (n as usize, 2),
        };
        let key = &out[at + hl..at + hl + 4];
        let body: Vec<u8> = out[at + hl + 4..at + hl + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        frames.push((first, body));
        at += hl + 4 + len;
    }
    let firsts: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert_eq!(firsts, [0x02, 0x89, 0x00, 0x80, 0x81]);
    let joined: Vec<u8> = [&frames[0].1[..], &frames[2].1[..], &frames[3].1[..]].concat();
    assert_eq!(joined, payload);
    assert_eq!(frames[1].1, b"hi");
    assert_eq!(frames[4].1, b"plain");
}

#[test]
fn a_message_past_the_limit_is_announced_too_big_without_inflating_it_all() {
    // A megabyte of zeros compresses to about a kilobyte.
    let bomb = compress(&vec![0u8; 1 << 20], 15);
    assert!(bomb.len() < 2048);
    let mut wire = client_frame(0xc2, &bomb);
    wire.extend(client_frame(0x81, b"after"));
    let mut i = Inflater::new(64 * 1024);
    let out = run(&mut i, &wire, 512).unwrap();
    let mut want = BytesMut::new();
    put_header(&mut want, 0x82, 64 * 1024 + 1);
    assert_eq!(out, want.to_vec(), "the header alone, and nothing after it");
}

#[test]
fn corrupt_data_is_an_error() {
    let wire = client_frame(0xc1, &[0xff; 40]);
    assert_eq!(
        run(&mut Inflater::new(1 << 20), &wire, 8),
        Err(InflateError::Corrupt)
    );
}

#[test]
fn frames_the_reader_must_refuse_pass_through_unchanged() {
    for wire in [
        client_frame(0xc9, b"x"),  // a compressed ping
        client_frame(0xa1, b"xy"), // RSV2
    ] {
        assert_eq!(run(&mut Inflater::new(1024), &wire, 2).unwrap(), wire);
    }
    // Unmasked: passed as is for the reader to refuse.
    let unmasked = [0xc1, 0x02, 0x61, 0x62];
    assert_eq!(
        run(&mut Inflater::new(1024), &unmasked, 1).unwrap(),
        unmasked
    );
    // A continuation with RSV1 inside a compressed message.
    let c = compress(b"hello hello", 15);
    let mut wire = client_frame(0x41, &c);
    let cont = client_frame(0xc0, b"zz");
    wire.extend(&cont);
    let out = run(&mut Inflater::new(1024), &wire, 4).unwrap();
    assert!(out.ends_with(&cont));
}

#[test]
fn an_empty_compressed_message_is_an_empty_message() {
    for payload in [compress(b"", 15), Vec::new()] {
        let wire = client_frame(0xc1, &payload);
        assert_eq!(
            run(&mut Inflater::new(1024), &wire, 1).unwrap(),
            plain_frame(0x81, b"")
        );
    }
}
