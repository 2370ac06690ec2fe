//! PROXY protocol v2 (the binary form HAProxy's `send-proxy-v2` writes): behind a
//! load balancer, every connection comes from the balancer's address, so the per-IP
//! limits would count all clients as one. The balancer puts the client's address in
//! a header before the first byte of the connection; this module decodes it, and says
//! which peers are trusted to send one ([`TrustedProxies`]).
//!
//! Hand-written rather than a crate: the server needs only the v2 source address, the
//! layout is 16 fixed bytes plus an address block, and the project's wire-format rule
//! (named offsets, typed errors, reads bounded in size and time) is easier to hold to
//! in ~150 lines than to check in a general parser. The v1 text form is not accepted.
//!
//! Layout (spec section 2.2): 12-byte signature, version/command byte, family/protocol
//! byte, 2-byte big-endian length of the address block; then the block: for TCP over
//! IPv4 source and destination addresses and ports (12 bytes), for IPv6 36 bytes; then
//! TLVs, which are skipped. The reader takes exactly the header's bytes from the
//! stream, so what follows (an HTTP request, a TLS ClientHello) is left untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature: the first 12 bytes of every header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 (text) header's start, refused from untrusted peers as well.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// Bytes before the address block.
pub const FIXED_LEN: usize = 16;
/// Offset of the version (high nibble) and command (low nibble).
const VERSION_COMMAND: usize = 12;
/// Offset of the address family (high nibble) and transport protocol (low nibble).
const FAMILY_PROTOCOL: usize = 13;
/// Offset of the big-endian length of the address block.
const BLOCK_LEN: usize = 14;
/// Version 2, high nibble.
const VERSION_2: u8 = 0x2;
/// LOCAL: the proxy's own connection (a health check); use the peer's address.
const COMMAND_LOCAL: u8 = 0x0;
/// PROXY: a relayed connection; the block holds the client's address.
const COMMAND_PROXY: u8 = 0x1;
/// AF_INET / AF_INET6 (high nibble of [`FAMILY_PROTOCOL`]); others carry no IP.
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
/// Source and destination address and port: 4 + 4 + 2 + 2 and 16 + 16 + 2 + 2 bytes.
const INET_BLOCK: usize = 12;
const INET6_BLOCK: usize = 36;
/// Largest address block accepted: the addresses plus a few small TLVs (HAProxy sends
/// none unless told to). The format allows 65,535 bytes, which a trusted but
/// misconfigured proxy could make every connection hold.
pub const MAX_BLOCK: usize = 512;

/// Why a trusted peer's header was refused. None of these carries request data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The connection did not start with the v2 signature.
    #[error("no PROXY v2 signature at the start of the connection")]
    Signature,
    /// A version other than 2.
    #[error("PROXY header version {0} (only 2 is accepted)")]
    Version(u8),
    /// A command other than LOCAL or PROXY.
    #[error("PROXY header command {0} is neither LOCAL nor PROXY")]
    Command(u8),
    /// The address block is longer than [`MAX_BLOCK`].
    #[error("PROXY header address block of {0} bytes (at most {MAX_BLOCK} accepted)")]
    TooLong(usize),
    /// The address block is shorter than its family's addresses.
    #[error("PROXY header address block of {len} bytes is too short for family {family}")]
    Short {
        /// The family nibble.
        family: u8,
        /// The block's length.
        len: usize,
    },
    /// The peer closed the connection inside the header.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// The header did not arrive in time.
    #[error("PROXY header not received within {0:?}")]
    Timeout(Duration),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(std::io::ErrorKind),
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxiedSource {
    /// A relayed client at this address.
    Client(SocketAddr),
    /// LOCAL, or PROXY for a family without addresses (UNSPEC, Unix sockets): the
    /// connection is the proxy's own; the peer's address stands.
    Local,
}

/// Decodes the fixed part: the command, the family and the block's length.
pub fn decode_fixed(fixed: &[u8; FIXED_LEN]) -> Result<(u8, u8, usize), ProxyHeaderError> {
    if fixed[..SIGNATURE.len()] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let version = fixed[VERSION_COMMAND] >> 4;
    if version != VERSION_2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let command = fixed[VERSION_COMMAND] & 0x0f;
    if command != COMMAND_LOCAL && command != COMMAND_PROXY {
        return Err(ProxyHeaderError::Command(command));
    }
    let len = usize::from(u16::from_be_bytes([fixed[BLOCK_LEN], fixed[BLOCK_LEN + 1]]));
    if len > MAX_BLOCK {
        return Err(ProxyHeaderError::TooLong(len));
    }
    Ok((command, fixed[FAMILY_PROTOCOL] >> 4, len))
}

/// Decodes the address block of a header whose fixed part gave `command` and `family`.
/// TLVs after the addresses are skipped.
pub fn decode_block(command: u8, family: u8, block: &[u8]) -> Result<ProxiedSource, ProxyHeaderError> {
    if command == COMMAND_LOCAL {
        return Ok(ProxiedSource::Local);
    }
    let short = || ProxyHeaderError::Short { family, len: block.len() };
    match family {
        FAMILY_INET => {
            let b: &[u8; INET_BLOCK] = block.get(..INET_BLOCK).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(ProxiedSource::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        FAMILY_INET6 => {
            let b: &[u8; INET6_BLOCK] = block.get(..INET6_BLOCK).and_then(|b| b.try_into().ok()).ok_or_else(short)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(ProxiedSource::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)))
        }
        // UNSPEC, AF_UNIX and unknown families carry no IP address: the spec says to
        // use the real one.
        _ => Ok(ProxiedSource::Local),
    }
}

/// Reads exactly one v2 header from `stream` within `timeout` (a proxy, or whoever
/// holds a trusted address, that sends a header byte by byte cannot hold the
/// connection longer), and nothing after it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxiedSource, ProxyHeaderError> {
    let read = async {
        let mut fixed = [0u8; FIXED_LEN];
        stream.read_exact(&mut fixed).await.map_err(io_error)?;
        let (command, family, len) = decode_fixed(&fixed)?;
        let mut block = [0u8; MAX_BLOCK];
        let block = &mut block[..len];
        stream.read_exact(block).await.map_err(io_error)?;
        decode_block(command, family, block)
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

fn io_error(e: std::io::Error) -> ProxyHeaderError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProxyHeaderError::Truncated,
        kind => ProxyHeaderError::Io(kind),
    }
}

/// What the first bytes of a connection from an untrusted peer look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A PROXY header (v2 signature or v1 `PROXY `): refuse the connection.
    ProxyHeader,
    /// Anything else: serve it.
    Other,
    /// A proper prefix of a header: wait for more bytes.
    Undecided,
}

/// Classifies the first bytes a peer sent (`start`, as peeked, not consumed).
pub fn classify_opening(start: &[u8]) -> Opening {
    if start.is_empty() {
        return Opening::Undecided;
    }
    let mut opening = Opening::Other;
    for signature in [&SIGNATURE[..], V1_PREFIX] {
        let n = start.len().min(signature.len());
        if start[..n] == signature[..n] {
            if n == signature.len() {
                return Opening::ProxyHeader;
            }
            opening = Opening::Undecided;
        }
    }
    opening
}

/// An address range in CIDR form (`127.0.0.1/32`, `::1/128`, `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A `--proxy-protocol-from` entry that is not a CIDR range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address range like 127.0.0.1/32 or ::1/128")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    /// True when `ip` is in the range (an IPv4-mapped IPv6 peer counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The peers whose PROXY headers are believed (`--proxy-protocol-from`). Empty: the
/// feature is off and nothing is read or peeked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// Parses a list of CIDR ranges.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, CidrError> {
        list.iter().map(|s| s.as_ref().parse()).collect::<Result<Vec<_>, _>>().map(Self)
    }

    /// Whether PROXY headers are in use at all.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// True when `peer` must (and may) send a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header for `src` → `dst` (PROXY, TCP), with `tlv` extra bytes.
    pub(crate) fn header(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
        let mut block = Vec::new();
        let family = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                FAMILY_INET
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                FAMILY_INET6
            }
            _ => unreachable!("same family"),
        };
        block.extend_from_slice(&src.port().to_be_bytes());
        block.extend_from_slice(&dst.port().to_be_bytes());
        block.extend_from_slice(tlv);
        let mut h = SIGNATURE.to_vec();
        h.push(0x21);
        h.push(family << 4 | 0x1);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(&block);
        h
    }

    async fn read(bytes: &[u8]) -> Result<ProxiedSource, ProxyHeaderError> {
        let mut r = bytes;
        read_header(&mut r, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_sources_are_decoded_and_nothing_after_is_read() {
        let src: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut bytes = header(src, "127.0.0.1:7420".parse().unwrap(), &[0x04, 0x00, 0x01, 0xaa]);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut r = &bytes[..];
        assert_eq!(read_header(&mut r, Duration::from_secs(1)).await, Ok(ProxiedSource::Client(src)));
        assert_eq!(r, b"GET / HTTP/1.1\r\n", "the request is left for HTTP");
        let src6: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
        assert_eq!(read(&header(src6, "[::1]:7420".parse().unwrap(), &[])).await, Ok(ProxiedSource::Client(src6)));
    }

    #[tokio::test]
    async fn local_and_unspec_headers_keep_the_peer_address() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(read(&local).await, Ok(ProxiedSource::Local));
        let mut unspec = SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert_eq!(read(&unspec).await, Ok(ProxiedSource::Local));
    }

    #[tokio::test]
    async fn bad_headers_are_typed_errors() {
        assert_eq!(read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await, Err(ProxyHeaderError::Signature));
        let good = header("192.0.2.7:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), &[]);
        let mut v1 = good.clone();
        v1[VERSION_COMMAND] = 0x11;
        assert_eq!(read(&v1).await, Err(ProxyHeaderError::Version(1)));
        let mut cmd = good.clone();
        cmd[VERSION_COMMAND] = 0x2f;
        assert_eq!(read(&cmd).await, Err(ProxyHeaderError::Command(0xf)));
        let mut long = good.clone();
        long[BLOCK_LEN..BLOCK_LEN + 2].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(read(&long).await, Err(ProxyHeaderError::TooLong(65535)));
        let mut short = good.clone();
        short[BLOCK_LEN..BLOCK_LEN + 2].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(read(&short[..FIXED_LEN + 4]).await, Err(ProxyHeaderError::Short { family: 1, len: 4 }));
        for cut in [3, FIXED_LEN, good.len() - 1] {
            assert_eq!(read(&good[..cut]).await, Err(ProxyHeaderError::Truncated), "cut at {cut}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_that_never_ends_times_out() {
        let (mut server, mut peer) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut peer, &SIGNATURE[..5]).await.unwrap();
        let r = read_header(&mut server, Duration::from_secs(5)).await;
        assert_eq!(r, Err(ProxyHeaderError::Timeout(Duration::from_secs(5))));
        drop(peer);
    }

    #[test]
    fn openings_are_classified() {
        assert_eq!(classify_opening(&SIGNATURE), Opening::ProxyHeader);
        assert_eq!(classify_opening(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), Opening::ProxyHeader);
        assert_eq!(classify_opening(b"\r\n\r\n"), Opening::Undecided);
        assert_eq!(classify_opening(b"P"), Opening::Undecided);
        assert_eq!(classify_opening(b""), Opening::Undecided);
        assert_eq!(classify_opening(b"POST /v1/auth"), Opening::Other);
        assert_eq!(classify_opening(&[0x16, 0x03, 0x01]), Opening::Other, "a TLS ClientHello");
    }

    #[test]
    fn cidr_ranges_parse_and_match() {
        let t = TrustedProxies::parse(&["127.0.0.1/32", "10.0.0.0/8", "::1/128", "2001:db8::/32"]).unwrap();
        for yes in ["127.0.0.1", "10.200.3.4", "::1", "2001:db8:ffff::1", "::ffff:10.1.1.1"] {
            assert!(t.trusts(yes.parse().unwrap()), "{yes}");
        }
        for no in ["127.0.0.2", "11.0.0.1", "::2", "2001:db9::1"] {
            assert!(!t.trusts(no.parse().unwrap()), "{no}");
        }
        assert!(TrustedProxies::parse(&["0.0.0.0/0"]).unwrap().trusts("203.0.113.9".parse().unwrap()));
        for bad in ["127.0.0.1", "127.0.0.1/33", "::1/129", "x/8", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!(!TrustedProxies::default().enabled());
    }
}
