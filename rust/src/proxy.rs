//! The PROXY protocol, versions 1 and 2 (HAProxy's spec): a sans-I/O parser and builders.
//!
//! `parse` takes the first bytes of a connection and returns the header with its length,
//! `Ok(None)` while more bytes are needed, or an error that says exactly what is wrong. The
//! same rules as `balancer.protocols.proxy_protocol` (the Python module the health checks use),
//! tested against each other by the system tests and fuzzed (`rust/fuzz`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107; // the longest v1 line, CRLF included
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";
const V2_HEADER: usize = 16;
const V2_MAX_BODY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// The client and the address it reached, or None for v1 UNKNOWN, v2 LOCAL or UNSPEC.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn error<T>(message: String) -> Result<T, Error> {
    Err(Error(message))
}

/// Up to 16 bytes shown as Python shows bytes (b'...'), for error messages.
fn shown(data: &[u8]) -> String {
    let mut out = String::from("b'");
    for &byte in data.iter().take(16) {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('\'');
    out
}

fn is_prefix(data: &[u8], of: &[u8]) -> bool {
    let n = data.len().min(of.len());
    data[..n] == of[..n]
}

/// The header at the start of `data` and its length, or None if more bytes are needed.
pub fn parse(data: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if is_prefix(data, V2_SIGNATURE) {
        return if data.len() >= V2_SIGNATURE.len() {
            parse_v2(data)
        } else {
            Ok(None)
        };
    }
    if is_prefix(data, V1_PREFIX) {
        return if data.len() >= V1_PREFIX.len() {
            parse_v1(data)
        } else {
            Ok(None)
        };
    }
    error(format!(
        "not a PROXY protocol header: starts with {}",
        shown(data)
    ))
}

fn port(text: &str) -> Result<u16, Error> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || text.len() > 5 || (text.len() > 1 && text.starts_with('0')) {
        return error(format!("bad port '{text}'"));
    }
    match text.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p as u16),
        Ok(p) => error(format!("port {p} out of range")),
        Err(_) => error(format!("bad port '{text}'")),
    }
}

fn address(text: &str, version: u8) -> Result<IpAddr, Error> {
    let parsed: Option<IpAddr> = if version == 4 {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    };
    match parsed {
        // As written canonically (no leading zeros, the shortest IPv6 form), in any case.
        Some(ip) if ip.to_string() == text.to_ascii_lowercase() => Ok(ip),
        _ => error(format!("bad IPv{version} address '{text}'")),
    }
}

fn parse_v1(data: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let window = &data[..data.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if data.len() >= V1_MAX || window.contains(&b'\n') {
            return error(format!(
                "v1 header without CRLF in its first {V1_MAX} bytes"
            ));
        }
        return Ok(None);
    };
    let Ok(line) = std::str::from_utf8(&data[..end]) else {
        return error("v1 header is not ASCII".into());
    };
    if !line.is_ascii() {
        return error("v1 header is not ASCII".into());
    }
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() >= 2 && parts[1] == "UNKNOWN" {
        return Ok(Some((
            Header {
                version: 1,
                addresses: None,
            },
            end + 2,
        )));
    }
    if parts.len() != 6 {
        return error(format!(
            "v1 header needs 6 fields, got {}: '{line}'",
            parts.len()
        ));
    }
    let version = match parts[1] {
        "TCP4" => 4,
        "TCP6" => 6,
        other => {
            return error(format!(
                "v1 protocol must be TCP4, TCP6 or UNKNOWN, got '{other}'"
            ));
        }
    };
    let source = SocketAddr::new(address(parts[2], version)?, port(parts[4])?);
    let destination = SocketAddr::new(address(parts[3], version)?, port(parts[5])?);
    Ok(Some((
        Header {
            version: 1,
            addresses: Some((source, destination)),
        },
        end + 2,
    )))
}

fn parse_v2(data: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if data.len() < V2_HEADER {
        return Ok(None);
    }
    let version_command = data[12];
    let family = data[13];
    let length = u16::from_be_bytes([data[14], data[15]]) as usize;
    if version_command >> 4 != 2 {
        return error(format!(
            "v2 version must be 2, got {}",
            version_command >> 4
        ));
    }
    let command = version_command & 0x0f;
    if command > 1 {
        return error(format!("v2 command must be LOCAL or PROXY, got {command}"));
    }
    if length > V2_MAX_BODY {
        return error(format!(
            "v2 header of {length} bytes is longer than {V2_MAX_BODY}"
        ));
    }
    let total = V2_HEADER + length;
    if data.len() < total {
        return Ok(None);
    }
    if command == 0 || family == 0 {
        return Ok(Some((
            Header {
                version: 2,
                addresses: None,
            },
            total,
        )));
    }
    let (name, size) = match family {
        0x11 => ("tcp4", 4),
        0x21 => ("tcp6", 16),
        _ => {
            return error(format!(
                "v2 family/protocol 0x{family:02x} is not TCP over IPv4 or IPv6"
            ));
        }
    };
    if length < 2 * size + 4 {
        return error(format!(
            "v2 {name} addresses need {} bytes, got {length}",
            2 * size + 4
        ));
    }
    let body = &data[V2_HEADER..total];
    let ip = |bytes: &[u8]| -> IpAddr {
        if size == 4 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[..16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    let at = 2 * size;
    let source_port = u16::from_be_bytes([body[at], body[at + 1]]);
    let destination_port = u16::from_be_bytes([body[at + 2], body[at + 3]]);
    let source = SocketAddr::new(ip(&body[..size]), source_port);
    let destination = SocketAddr::new(ip(&body[size..2 * size]), destination_port);
    Ok(Some((
        Header {
            version: 2,
            addresses: Some((source, destination)),
        },
        total,
    )))
}

/// Python's view of an address: an IPv4-mapped IPv6 address is the IPv4 one it maps.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn build_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = (plain(source.ip()), plain(destination.ip()));
    let proto = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {proto} {src} {dst} {} {}\r\n",
        source.port(),
        destination.port()
    )
    .into_bytes()
}

pub fn build_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    let (src, dst) = (plain(source.ip()), plain(destination.ip()));
    let mut body = Vec::with_capacity(36);
    let family = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x21
        }
        _ => 0x00,
    };
    if family != 0 {
        body.extend_from_slice(&source.port().to_be_bytes());
        body.extend_from_slice(&destination.port().to_be_bytes());
    }
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The header for `version` (1 or 2).
pub fn build(version: u8, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    if version == 1 {
        build_v1(source, destination)
    } else {
        build_v2(source, destination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_round_trip() {
        let (s, d) = (addr("192.0.2.1:5000"), addr("127.0.0.1:80"));
        let header = build_v1(s, d);
        assert_eq!(header, b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n");
        let mut data = header.clone();
        data.extend_from_slice(b"GET /");
        let (parsed, length) = parse(&data).unwrap().unwrap();
        assert_eq!(length, header.len());
        assert_eq!(parsed.addresses, Some((s, d)));
    }

    #[test]
    fn v2_round_trip_ipv6() {
        let (s, d) = (addr("[2001:db8::1]:5000"), addr("[::1]:443"));
        let header = build_v2(s, d);
        assert_eq!(header.len(), 16 + 36);
        let (parsed, length) = parse(&header).unwrap().unwrap();
        assert_eq!((parsed.version, length), (2, 52));
        assert_eq!(parsed.addresses, Some((s, d)));
    }

    #[test]
    fn every_split_point_needs_more_then_parses() {
        for header in [
            build_v1(addr("10.0.0.1:1"), addr("10.0.0.2:2")),
            build_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2")),
        ] {
            for cut in 0..header.len() {
                assert_eq!(parse(&header[..cut]), Ok(None), "cut at {cut}");
            }
            assert!(parse(&header).unwrap().is_some());
        }
    }

    #[test]
    fn unknown_and_local_carry_no_addresses() {
        let (h, n) = parse(b"PROXY UNKNOWN\r\nrest").unwrap().unwrap();
        assert_eq!((h.addresses, n), (None, 15));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0, 0, 0]);
        let (h, n) = parse(&local).unwrap().unwrap();
        assert_eq!((h.addresses, n), (None, 16));
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET / HTTP/1.1\r\n",
                "not a PROXY protocol header: starts with b'GET / HTTP/1.1\\r\\n'",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                "v1 header needs 6 fields, got 5",
            ),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                "v1 protocol must be TCP4, TCP6 or UNKNOWN",
            ),
            (
                b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",
                "bad IPv4 address '1.2.3.04'",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port '01'"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
                "port 65536 out of range",
            ),
            (b"PROXY TCP4 1.2.3.4\n", "v1 header without CRLF"),
        ];
        for (data, expected) in cases {
            let message = parse(data).unwrap_err().0;
            assert!(message.starts_with(expected), "{message:?} for {data:?}");
        }
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert_eq!(parse(&v2).unwrap_err().0, "v2 version must be 2, got 3");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            parse(&v2).unwrap_err().0,
            "v2 tcp4 addresses need 12 bytes, got 4"
        );
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(parse(&long).unwrap_err().0.contains("without CRLF"));
    }

    #[test]
    fn mixed_families_build_unknown() {
        let (s, d) = (addr("10.0.0.1:1"), addr("[2001:db8::2]:2"));
        assert_eq!(build_v1(s, d), b"PROXY UNKNOWN\r\n");
        assert_eq!(&build_v2(s, d)[12..], &[0x21, 0x00, 0, 0]);
    }
}
