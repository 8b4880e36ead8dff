//! The SSRF guard of webhook endpoints: a delivery goes to the public internet (or an
//! organisation's routable hosts), never to this machine, a private network, a
//! link-local address (the cloud metadata service at 169.254.169.254), the unspecified
//! address or a multicast group. An endpoint URL is checked when it is registered
//! ([`check_url`]), and every delivery checks the addresses its host resolves to at that
//! moment ([`GuardedResolver`], the addresses the client then connects to), so a name
//! that resolves to a public address at registration and to an internal one later (DNS
//! rebinding) is refused without a connection. `webhooks.allow_private_hosts` turns the
//! guard off (a receiver on a private network, the tests' receiver on 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest wait for the name lookup of a registration check.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a delivery must not go to `ip`.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        // 0.0.0.0/8 ("this network": Linux connects 0.x to the local host) and the
        // carrier-grade NAT range 100.64.0.0/10 (internal by definition).
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    // An IPv4 address written as IPv6 (::ffff:a.b.c.d, ::a.b.c.d) is judged as IPv4.
    if let Some(v4) = ip.to_ipv4() {
        return ip.is_loopback() || ip.is_unspecified() || forbidden_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still private)
}

/// Why an endpoint URL was refused (each a fixed message naming the field, never the URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The host is, or resolves to, an address a delivery must not go to.
    PrivateAddress,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::PrivateAddress => {
                "The field 'url' must name a public host: loopback, private, link-local, unspecified and multicast addresses (or names resolving to them) are refused."
            }
        }
    }
}

/// Checks an endpoint URL's host at registration: an address literal is judged as it is,
/// a name by every address it resolves to now. A name that does not resolve (yet) is
/// accepted: every delivery checks its addresses again ([`GuardedResolver`]).
pub async fn check_url(url: &url::Url) -> Result<(), Refusal> {
    let port = url.port_or_known_default().unwrap_or(443);
    match url.host() {
        Some(url::Host::Ipv4(ip)) => judge([IpAddr::V4(ip)]),
        Some(url::Host::Ipv6(ip)) => judge([IpAddr::V6(ip)]),
        Some(url::Host::Domain(name)) => {
            match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await
            {
                Ok(Ok(addrs)) => judge(addrs.map(|a| a.ip())),
                _ => Ok(()),
            }
        }
        None => Err(Refusal::PrivateAddress),
    }
}

fn judge(addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Refusal> {
    if addrs.into_iter().any(forbidden) {
        Err(Refusal::PrivateAddress)
    } else {
        Ok(())
    }
}

/// The address literal of a URL's host that a delivery must not go to (the resolver is
/// not asked for a literal, so the delivery checks it itself).
pub fn forbidden_literal(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => forbidden(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => forbidden(IpAddr::V6(ip)),
        _ => false,
    }
}

/// The error of a lookup whose answer holds a forbidden address.
#[derive(Debug)]
pub struct ForbiddenAddress;

impl std::fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the endpoint's host resolves to a refused address")
    }
}

impl std::error::Error for ForbiddenAddress {}

/// The delivery client's name resolver: the system's lookup, refused as a whole when any
/// address of the answer is forbidden (so the client cannot fall back to it). The client
/// connects only to the addresses returned here, which closes the gap between a check
/// and the connection that DNS rebinding exploits.
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.iter().any(|a| forbidden(a.ip())) {
                return Err(Box::new(ForbiddenAddress) as _);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a failed request was stopped by the guard (its error chain holds
/// [`ForbiddenAddress`]).
pub fn stopped_by_guard(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<ForbiddenAddress>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden_and_public_ones_are_not() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[tokio::test]
    async fn registration_refuses_literals_and_names_of_internal_hosts() {
        for url in [
            "https://127.0.0.1/hook",
            "https://[::1]:8443/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/hook",
            "https://localhost/hook",
        ] {
            let url = url::Url::parse(url).unwrap();
            assert_eq!(check_url(&url).await, Err(Refusal::PrivateAddress), "{url}");
        }
        let public = url::Url::parse("https://93.184.216.34/hook").unwrap();
        assert_eq!(check_url(&public).await, Ok(()));
        assert!(forbidden_literal("https://127.0.0.1:9/x"));
        assert!(!forbidden_literal("https://hooks.example.test/x"));
        // The message names the field, never the URL.
        assert!(!Refusal::PrivateAddress.message().contains("127.0.0.1"));
    }
}
