//! Unit tests of the fast path's heads.
use super::*;

fn ready(raw: &str) -> Request {
    match request(raw.as_bytes(), "10.0.0.7", |p| p == "/events") {
        Parsed::Ready(r) => r,
        other => panic!("not taken: {other:?} for {raw:?}"),
    }
}

fn to_pingora(raw: &[u8]) -> bool {
    matches!(
        request(raw, "10.0.0.7", |p| p == "/events"),
        Parsed::Pingora
    )
}

#[test]
fn the_app_gets_the_head_without_hop_by_hop_headers_and_with_forwarded_ones() {
    let raw = "POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n\
         X-Secret: no\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil\r\nContent-Length: 3\r\nX-App: yes\r\n\r\nabc";
    let r = ready(raw);
    let up = String::from_utf8(r.upstream).unwrap();
    assert_eq!(
        up,
        "POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 3\r\nX-App: yes\r\n\
         x-forwarded-for: 203.0.113.9, 10.0.0.7\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: shop.example\r\n\r\n"
    );
    assert_eq!((r.body_len, r.head_method, r.close), (3, false, false));
    assert_eq!(
        r.head_len,
        raw.len() - 3,
        "the body is not part of the head"
    );
}

#[test]
fn close_head_and_partial_heads_are_read_as_such() {
    let r = ready("HEAD / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
    assert!(r.close && r.head_method);
    assert!(String::from_utf8(r.upstream).unwrap().ends_with(
        "x-forwarded-for: 10.0.0.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
    ));
    assert!(matches!(
        request(b"GET / HTTP/1.1\r\nHost: a\r\n", "1.2.3.4", |_| false),
        Parsed::Partial
    ));
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n",
        "y".repeat(MAX_HEAD)
    );
    assert!(
        to_pingora(huge.as_bytes()),
        "a head past MAX_HEAD is pingora's"
    );
}

#[test]
fn anything_unusual_is_left_to_pingora() {
    for raw in [
        "GET /events HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /events?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        "PROPFIND / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /{x} HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
    ] {
        assert!(to_pingora(raw.as_bytes()), "taken: {raw:?}");
    }
}

fn parse(raw: &str, head_method: bool, close: bool) -> (Response, String) {
    let mut head = Vec::new();
    let r = response(raw.as_bytes(), head_method, close, &mut head)
        .unwrap()
        .unwrap();
    (r, String::from_utf8(head).unwrap())
}

#[test]
fn responses_are_framed_as_the_app_framed_them() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=4\r\nX-App: 1\r\n\r\nhello";
    let (r, head) = parse(raw, false, false);
    assert_eq!(
        (r.status, r.framing, r.reusable),
        (200, Framing::Length(5), true)
    );
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\n"
    );
    assert_eq!(r.head_len, raw.len() - 5);

    let (r, head) = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
        false,
        true,
    );
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(
        head, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n",
        "a length beside chunked is dropped"
    );

    let (r, head) = parse("HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", false, false);
    assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
    assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");

    let (r, _) = parse(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        false,
        false,
    );
    assert_eq!(r.framing, Framing::UntilClose);

    for (raw, head_method) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
        ("HTTP/1.1 204 No Content\r\n\r\n", false),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        ),
    ] {
        let (r, _) = parse(raw, head_method, false);
        assert_eq!((r.framing, r.reusable), (Framing::Empty, true), "{raw}");
    }

    let (r, head) = parse(
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        false,
        true,
    );
    assert_eq!(r.framing, Framing::Empty);
    assert!(!head.contains("connection"), "{head}");

    let (r, _) = parse(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
    );
    assert!(!r.reusable, "the app closes it");
}

#[test]
fn responses_that_cannot_be_framed_are_refused() {
    for raw in [
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "NOT HTTP\r\n\r\n",
    ] {
        assert!(
            response(raw.as_bytes(), false, false, &mut Vec::new()).is_err(),
            "{raw}"
        );
    }
    assert!(matches!(
        response(
            b"HTTP/1.1 200 OK\r\nX: y\r\n",
            false,
            false,
            &mut Vec::new()
        ),
        Ok(None)
    ));
}
