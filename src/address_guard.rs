//! The SSRF guard: which network addresses an outbound request may reach. Names are checked after
//! resolution, at connect time (a reqwest DNS resolver), and IP literals before each request, so a
//! public-looking name that resolves to 127.0.0.1, or a `[::ffff:127.0.0.1]` redirect, is refused.
//! Internal classes are allowed only where the provider itself lives (an intranet provider may
//! serve intranet files) or where the operator allows them; metadata and reserved addresses never.
use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// What kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918 and IPv6 unique-local.
    Private,
    LinkLocal,
    /// RFC 6598 carrier-grade NAT space.
    Shared,
    /// Cloud instance-metadata endpoints: never reachable.
    Metadata,
    /// Unspecified, multicast, broadcast, documentation and other non-unicast space: never reachable.
    Reserved,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Shared => "shared (CGNAT)",
            AddressClass::Metadata => "cloud metadata",
            AddressClass::Reserved => "reserved",
        }
    }

    /// The classes an operator may allow (`ALLOW_INTERNAL_ADDRESSES`).
    pub fn parse_allowable(s: &str) -> Option<Self> {
        match s {
            "loopback" => Some(AddressClass::Loopback),
            "private" => Some(AddressClass::Private),
            "link-local" => Some(AddressClass::LinkLocal),
            "shared" => Some(AddressClass::Shared),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            AddressClass::Loopback => 1,
            AddressClass::Private => 2,
            AddressClass::LinkLocal => 4,
            AddressClass::Shared => 8,
            AddressClass::Public | AddressClass::Metadata | AddressClass::Reserved => 0,
        }
    }
}

/// Metadata services answer on these whatever network they sit in (AWS, GCP, Azure, ECS, Alibaba).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if METADATA_V4.contains(&ip) {
        AddressClass::Metadata
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::Shared
    } else if a == 0
        || ip.is_multicast()
        || a >= 240
        || ip.is_documentation()
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b & 0xfe) == 18)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    // Forms that carry an IPv4 address are judged by it: mapped (::ffff:a.b.c.d), NAT64
    // (64:ff9b::/96 and the local-use 64:ff9b:1::/48), 6to4 (2002::/16) and the old compatible form.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // The SIIT "IPv4-translated" form, ::ffff:0:a.b.c.d.
    if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] || s[2] == 1) {
        return classify_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return classify_v4(embedded(s[1], s[2]));
    }
    if ip == METADATA_V6 {
        return AddressClass::Metadata;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // `::` and the deprecated IPv4-compatible form.
        return if ip.is_unspecified() { AddressClass::Reserved } else { classify_v4(embedded(s[6], s[7])) };
    }
    if (s[0] & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (s[0] & 0xffc0) == 0xfec0 {
        // Deprecated site-local: private in practice.
        AddressClass::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if ip.is_multicast() || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8)) {
        // Multicast, Teredo (hides its client's IPv4 address) and documentation space.
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// The internal classes a request may reach; public addresses are always allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Allowed(u8);

impl Allowed {
    pub const NONE: Allowed = Allowed(0);
    /// Every internal class (metadata and reserved addresses stay refused): for the registered
    /// provider's own origins, which an operator chose.
    pub const ALL_INTERNAL: Allowed = Allowed(0x0f);

    pub fn with(self, class: AddressClass) -> Self {
        Allowed(self.0 | class.bit())
    }

    pub fn union(self, other: Allowed) -> Self {
        Allowed(self.0 | other.0)
    }

    pub fn permits(self, class: AddressClass) -> bool {
        match class {
            AddressClass::Public => true,
            AddressClass::Metadata | AddressClass::Reserved => false,
            c => self.0 & c.bit() != 0,
        }
    }
}

/// An address the guard refused.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub class: AddressClass,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.host;
        if *host == self.ip.to_string() {
            write!(
                f,
                "{host} is a {} address, which bulk-import does not connect to here",
                self.class.as_str()
            )
        } else {
            write!(
                f,
                "{host} resolves to {}, a {} address, which bulk-import does not connect to here",
                self.ip,
                self.class.as_str()
            )
        }
    }
}

pub fn check(host: &str, ip: IpAddr, allowed: Allowed) -> Result<(), Refused> {
    let class = classify(ip);
    if allowed.permits(class) {
        Ok(())
    } else {
        Err(Refused { host: host.to_string(), ip, class })
    }
}

/// IP-literal hosts never reach the resolver, so they are checked here, before each request.
pub fn check_url(url: &Url, allowed: Allowed) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(Host::Domain(_)) | None => return Ok(()),
    };
    check(&ip.to_string(), ip, allowed)
}

/// Fixed answers for names (like `/etc/hosts`); tests use them to point public-looking names at
/// loopback. They are checked like any other answer.
pub type Overrides = Arc<HashMap<String, Vec<IpAddr>>>;

async fn lookup(overrides: &Overrides, host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Some(ips) = overrides.get(&host.to_ascii_lowercase()) {
        return Ok(ips.clone());
    }
    Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect())
}

/// The internal classes `host` itself is on (an IP literal, or every address its name resolves to).
pub async fn classes_of(host: &Host<String>, overrides: &Overrides) -> Allowed {
    let ips = match host {
        Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
        Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
        Host::Domain(d) => lookup(overrides, d).await.unwrap_or_default(),
    };
    ips.into_iter().fold(Allowed::NONE, |a, ip| a.with(classify(ip)))
}

/// A resolver that drops the addresses `allowed` does not permit, and fails when none is left.
pub struct GuardedResolver {
    pub allowed: Allowed,
    pub overrides: Overrides,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (allowed, overrides, host) = (self.allowed, self.overrides.clone(), name.as_str().to_string());
        Box::pin(async move {
            let ips = lookup(&overrides, &host).await?;
            let mut refused = None;
            let ok: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| match check(&host, *ip, allowed) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            // One refused address refuses the name: a name with a public and a private answer is
            // the classic rebinding trick.
            if let Some(r) = refused {
                return Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>);
            }
            if ok.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            Ok(Box::new(ok.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified_in_every_form() {
        for (ip, want) in [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.3.4.5", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::7f00:1", AddressClass::Loopback),
            ("2002:7f00:1::", AddressClass::Loopback),
            ("::127.0.0.1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("fd12::1", AddressClass::Private),
            ("fec0::1", AddressClass::Private),
            ("::ffff:0:7f00:1", AddressClass::Loopback),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::Shared),
            ("169.254.169.254", AddressClass::Metadata),
            ("::ffff:169.254.169.254", AddressClass::Metadata),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("0.0.0.0", AddressClass::Reserved),
            ("::", AddressClass::Reserved),
            ("224.0.0.1", AddressClass::Reserved),
            ("ff02::1", AddressClass::Reserved),
            ("255.255.255.255", AddressClass::Reserved),
            ("2001:0:4136:e378::1", AddressClass::Reserved),
            ("93.184.216.34", AddressClass::Public),
            ("2606:4700::1111", AddressClass::Public),
            ("::ffff:93.184.216.34", AddressClass::Public),
            ("100.128.0.1", AddressClass::Public),
        ] {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn only_allowed_internal_classes_pass_and_metadata_never() {
        let loopback = Allowed::NONE.with(AddressClass::Loopback);
        assert!(loopback.permits(AddressClass::Loopback));
        assert!(!loopback.permits(AddressClass::Private));
        assert!(Allowed::NONE.permits(AddressClass::Public));
        assert!(!Allowed::ALL_INTERNAL.permits(AddressClass::Metadata));
        assert!(!Allowed::ALL_INTERNAL.permits(AddressClass::Reserved));
        let url = Url::parse("http://[::ffff:127.0.0.1]:8080/x").unwrap();
        let err = check_url(&url, Allowed::NONE).unwrap_err();
        assert_eq!(err.class, AddressClass::Loopback);
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(check_url(&url, loopback).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_with_any_internal_answer() {
        let overrides: Overrides = Arc::new(HashMap::from([
            ("files.example.com".to_string(), vec!["127.0.0.1".parse().unwrap()]),
            (
                "mixed.example.com".to_string(),
                vec!["93.184.216.34".parse().unwrap(), "10.0.0.1".parse().unwrap()],
            ),
            ("cdn.example.com".to_string(), vec!["93.184.216.34".parse().unwrap()]),
        ]));
        let r = GuardedResolver { allowed: Allowed::NONE, overrides: overrides.clone() };
        for refused in ["files.example.com", "mixed.example.com"] {
            let err = r.resolve(refused.parse().unwrap()).await.err().expect(refused);
            assert!(err.to_string().contains("does not connect"), "{err}");
        }
        let ok: Vec<_> = r.resolve("cdn.example.com".parse().unwrap()).await.unwrap().collect();
        assert_eq!(ok, vec!["93.184.216.34:0".parse().unwrap()]);
        let host = Host::Domain("files.example.com".to_string());
        assert_eq!(classes_of(&host, &overrides).await, Allowed::NONE.with(AddressClass::Loopback));
    }
}
