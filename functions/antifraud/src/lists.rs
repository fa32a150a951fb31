//! `[[list]]`: named sets of values — devices, addresses and networks, payment instruments,
//! players — that filters test membership of (`where = { ip = { in_list = "blocked_ips" } }`).
//! A list may be scoped to one tenant; an event is tested against its own tenant's entries and
//! the entries of blocks without a tenant. Lists change with the rule files (hot reload) and are
//! read when an event arrives: an event already in a window keeps what it was judged then.
//! Described in docs/rules.md, "Lists".

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// A rule set's lists by name.
pub type Lists = HashMap<String, Arc<NamedList>>;

/// What a list's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Strings compared exactly (devices, payment instruments, players, games…).
    Text,
    /// IP addresses and CIDR networks, for the `ip` field: `203.0.113.7` and
    /// `198.51.100.0/24`; IPv4-mapped IPv6 addresses are read as the IPv4 address.
    Ip,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Text => "text",
            ListKind::Ip => "ip",
        }
    }
}

/// Sets hashed with foldhash, seeded per process: several times faster than the standard
/// hasher on short keys, and the values probed (from events) never insert.
type Set<T> = HashSet<T, foldhash::fast::RandomState>;

/// Maps hashed as [`Set`]: an entry that ends, to its end (ms since the epoch).
type Map<K> = HashMap<K, i64, foldhash::fast::RandomState>;

/// The entries of one list for one tenant, or for every tenant.
#[derive(Default)]
struct Entries {
    texts: Set<Box<str>>,
    addrs: Set<IpAddr>,
    /// Networks by prefix length (a handful of lengths in practice): a lookup is one probe
    /// per length of the address's family.
    nets: Vec<(u8, Set<IpNet>)>,
    /// Entries with an end (`{ value = …, until = … }`), apart: a list without any pays
    /// nothing for them, neither memory nor a probe.
    ending: Option<Box<Ending>>,
}

/// Entries that hold for events before a time.
#[derive(Default)]
struct Ending {
    texts: Map<Box<str>>,
    addrs: Map<IpAddr>,
    nets: Vec<(u8, Map<IpNet>)>,
}

impl Ending {
    fn len(&self) -> usize {
        self.texts.len() + self.addrs.len() + self.nets.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    /// The end of the entry holding `a` (the latest, if several do).
    fn addr_until(&self, a: IpAddr) -> Option<i64> {
        let nets = self.nets.iter().filter_map(|(len, m)| {
            IpNet::new(a, *len)
                .ok()
                .and_then(|n| m.get(&n.trunc()).copied())
        });
        self.addrs.get(&a).copied().into_iter().chain(nets).max()
    }

    /// Entries whose end is at or before `at_ms`.
    fn ended(&self, at_ms: i64) -> usize {
        let n = |ends: &mut dyn Iterator<Item = &i64>| ends.filter(|u| **u <= at_ms).count();
        n(&mut self.texts.values())
            + n(&mut self.addrs.values())
            + self
                .nets
                .iter()
                .map(|(_, m)| n(&mut m.values()))
                .sum::<usize>()
    }
}

impl Entries {
    fn len(&self) -> usize {
        self.texts.len()
            + self.addrs.len()
            + self.nets.iter().map(|(_, s)| s.len()).sum::<usize>()
            + self.ending.as_ref().map_or(0, |e| e.len())
    }

    fn contains_text(&self, v: &str, at_ms: i64) -> bool {
        self.texts.contains(v)
            || self
                .ending
                .as_ref()
                .and_then(|e| e.texts.get(v))
                .is_some_and(|until| at_ms < *until)
    }

    fn contains_addr(&self, a: IpAddr, at_ms: i64) -> bool {
        self.addrs.contains(&a)
            || self
                .nets
                .iter()
                .any(|(len, set)| IpNet::new(a, *len).is_ok_and(|n| set.contains(&n.trunc())))
            || self
                .ending
                .as_ref()
                .and_then(|e| e.addr_until(a))
                .is_some_and(|until| at_ms < until)
    }
}

/// One list of a rule set: every `[[list]]` block of its name, merged.
pub struct NamedList {
    pub name: String,
    pub kind: ListKind,
    /// The first block's `description` that is not empty.
    pub description: String,
    /// Where it is first defined.
    pub file: String,
    pub line: usize,
    global: Entries,
    tenants: HashMap<String, Entries, foldhash::fast::RandomState>,
}

// Filters compare lists by name: a reload that changes a list's entries keeps the windows of
// the rules that read it (their events were judged on arrival).
impl PartialEq for NamedList {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.kind == other.kind
    }
}

impl fmt::Debug for NamedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "list {:?} ({})", self.name, self.kind.as_str())
    }
}

/// Why a value cannot be an entry of a list of `kind`.
pub fn check_value(kind: ListKind, v: &str) -> Result<(), String> {
    parse(kind, v).map(|_| ())
}

/// The form two values of a list of `kind` compare equal in: an address or network as the
/// list reads it (`2001:0DB8::1` and `2001:db8::1` alike, an IPv4-mapped address as the IPv4
/// one), text as it is; `None` for a value the kind cannot hold.
pub fn canonical(kind: ListKind, v: &str) -> Option<String> {
    match parse(kind, v).ok()? {
        Parsed::Text => Some(v.to_owned()),
        Parsed::Addr(a) => Some(a.to_string()),
        Parsed::Net(n) => Some(n.to_string()),
    }
}

enum Parsed {
    Text,
    Addr(IpAddr),
    Net(IpNet),
}

/// The longest an entry may be: what an event's text field may hold.
pub const MAX_VALUE: usize = pitboss_model::validate::MAX_TEXT;

fn parse(kind: ListKind, v: &str) -> Result<Parsed, String> {
    if v.is_empty() {
        return Err("an empty value matches nothing".into());
    }
    if v.len() > MAX_VALUE {
        return Err(format!("a value is longer than {MAX_VALUE} bytes"));
    }
    if v.trim() != v {
        return Err(format!(
            "{v:?} has spaces at its start or end: events' values never do"
        ));
    }
    match kind {
        ListKind::Text => Ok(Parsed::Text),
        ListKind::Ip => {
            if let Ok(a) = v.parse::<IpAddr>() {
                return Ok(Parsed::Addr(a.to_canonical()));
            }
            let n: IpNet = v.parse().map_err(|_| {
                format!(
                    "{v:?} is not an IP address or a CIDR network (like 203.0.113.7, \
                     2001:db8::1 or 198.51.100.0/24)"
                )
            })?;
            if n.trunc() != n {
                return Err(format!(
                    "{v:?} has bits set past its prefix: the network is {}",
                    n.trunc()
                ));
            }
            Ok(canonical_net(n))
        }
    }
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 one, so that it matches
/// the addresses events carry either way; a network of one address as that address.
fn canonical_net(n: IpNet) -> Parsed {
    let n = match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(n),
            None => n,
        },
        _ => n,
    };
    if n.prefix_len() == n.max_prefix_len() {
        Parsed::Addr(n.addr())
    } else {
        Parsed::Net(n)
    }
}

impl NamedList {
    pub fn new(name: &str, kind: ListKind, file: &str, line: usize) -> NamedList {
        NamedList {
            name: name.to_owned(),
            kind,
            description: String::new(),
            file: file.to_owned(),
            line,
            global: Entries::default(),
            tenants: HashMap::default(),
        }
    }

    /// Adds an entry for `tenant` (`None`: every tenant). Refuses a value the kind cannot
    /// hold, with the reason.
    pub fn add(&mut self, tenant: Option<&str>, v: &str) -> Result<(), String> {
        self.add_until(tenant, v, None)
    }

    /// Adds an entry that holds for events whose `occurred_at` is before `until` (ms since
    /// the epoch; `None`: always). The same value listed for ever and until a time is listed
    /// for ever; listed until two times, until the later.
    pub fn add_until(
        &mut self,
        tenant: Option<&str>,
        v: &str,
        until: Option<i64>,
    ) -> Result<(), String> {
        let parsed = parse(self.kind, v)?;
        let e = match tenant {
            None => &mut self.global,
            Some(t) => self.tenants.entry(t.to_owned()).or_default(),
        };
        if let Some(until) = until {
            let later = |m: &mut i64| *m = (*m).max(until);
            match parsed {
                Parsed::Text if !e.texts.contains(v) => {
                    let end = e.ending.get_or_insert_default();
                    end.texts.entry(v.into()).and_modify(later).or_insert(until);
                }
                Parsed::Addr(a) if !e.addrs.contains(&a) => {
                    let end = e.ending.get_or_insert_default();
                    end.addrs.entry(a).and_modify(later).or_insert(until);
                }
                Parsed::Net(n)
                    if !e
                        .nets
                        .iter()
                        .any(|(l, s)| *l == n.prefix_len() && s.contains(&n)) =>
                {
                    let end = e.ending.get_or_insert_default();
                    let len = n.prefix_len();
                    let m = match end.nets.iter().position(|(l, _)| *l == len) {
                        Some(i) => &mut end.nets[i].1,
                        None => {
                            end.nets.push((len, Map::default()));
                            &mut end.nets.last_mut().expect("just pushed").1
                        }
                    };
                    m.entry(n).and_modify(later).or_insert(until);
                }
                // Listed for ever already.
                _ => {}
            }
            return Ok(());
        }
        // For ever: an end it had goes.
        if let Some(end) = e.ending.as_mut() {
            match &parsed {
                Parsed::Text => {
                    end.texts.remove(v);
                }
                Parsed::Addr(a) => {
                    end.addrs.remove(a);
                }
                Parsed::Net(n) => {
                    for (_, m) in &mut end.nets {
                        m.remove(n);
                    }
                }
            }
        }
        match parsed {
            Parsed::Text => {
                e.texts.insert(v.into());
            }
            Parsed::Addr(a) => {
                e.addrs.insert(a);
            }
            Parsed::Net(n) => {
                let len = n.prefix_len();
                match e.nets.iter_mut().find(|(l, _)| *l == len) {
                    Some((_, set)) => {
                        set.insert(n);
                    }
                    None => {
                        let mut set = Set::default();
                        set.insert(n);
                        e.nets.push((len, set));
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes sure `tenant` is listed even with no entry (a block of no values).
    pub fn touch(&mut self, tenant: Option<&str>) {
        if let Some(t) = tenant {
            self.tenants.entry(t.to_owned()).or_default();
        }
    }

    /// Whether `value`, carried by an event of `tenant`, is on the list: among the entries
    /// of blocks without a tenant or of that tenant's. An `ip` list holds an address that is
    /// one of its addresses or inside one of its networks; a value that is not an address is
    /// on no `ip` list.
    ///
    /// `at_ms` is the event's `occurred_at`: an entry with an end holds for events before it.
    pub fn contains(&self, tenant: &str, value: &str, at_ms: i64) -> bool {
        let scoped = self.tenants.get(tenant);
        match self.kind {
            ListKind::Text => {
                self.global.contains_text(value, at_ms)
                    || scoped.is_some_and(|e| e.contains_text(value, at_ms))
            }
            ListKind::Ip => {
                let Ok(a) = value.parse::<IpAddr>() else {
                    return false;
                };
                let a = a.to_canonical();
                self.global.contains_addr(a, at_ms)
                    || scoped.is_some_and(|e| e.contains_addr(a, at_ms))
            }
        }
    }

    /// Whether `value` itself is an entry for `tenant`'s events (its own or every tenant's):
    /// the same text, address or network, read as the list reads it — not an address inside a
    /// listed network, as [`NamedList::contains`] answers.
    pub fn holds(&self, tenant: &str, value: &str) -> bool {
        let Ok(parsed) = parse(self.kind, value) else {
            return false;
        };
        let has = |e: &Entries| {
            let end = e.ending.as_deref();
            match &parsed {
                Parsed::Text => {
                    e.texts.contains(value) || end.is_some_and(|x| x.texts.contains_key(value))
                }
                Parsed::Addr(a) => {
                    e.addrs.contains(a) || end.is_some_and(|x| x.addrs.contains_key(a))
                }
                Parsed::Net(n) => {
                    e.nets
                        .iter()
                        .any(|(len, set)| *len == n.prefix_len() && set.contains(n))
                        || end.is_some_and(|x| {
                            x.nets
                                .iter()
                                .any(|(len, m)| *len == n.prefix_len() && m.contains_key(n))
                        })
                }
            }
        };
        has(&self.global) || self.tenants.get(tenant).is_some_and(has)
    }

    /// Entries in all, every tenant's counted.
    pub fn len(&self) -> usize {
        self.global.len() + self.tenants.values().map(Entries::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries for every tenant (blocks without a tenant).
    pub fn len_global(&self) -> usize {
        self.global.len()
    }

    /// Entries with an end, every tenant's counted: (all of them, those ended at `at_ms`).
    pub fn ending(&self, at_ms: i64) -> (usize, usize) {
        std::iter::once(&self.global)
            .chain(self.tenants.values())
            .filter_map(|e| e.ending.as_deref())
            .fold((0, 0), |(n, ended), e| {
                (n + e.len(), ended + e.ended(at_ms))
            })
    }

    /// The tenants with blocks of their own and their entries' count, by tenant.
    pub fn tenants(&self) -> Vec<(&str, usize)> {
        let mut v: Vec<_> = self
            .tenants
            .iter()
            .map(|(t, e)| (t.as_str(), e.len()))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_ip_list_holds_addresses_and_networks_of_both_families_read_canonically() {
        let mut l = NamedList::new("blocked_ips", ListKind::Ip, "f.toml", 1);
        for v in [
            "203.0.113.7",
            "198.51.100.0/24",
            "2001:db8::/32",
            "::ffff:192.0.2.0/120",
            "10.1.2.3/32",
        ] {
            l.add(None, v).unwrap();
        }
        assert!(l.contains("t", "203.0.113.7", 0));
        assert!(!l.contains("t", "203.0.113.8", 0));
        assert!(l.contains("t", "198.51.100.200", 0));
        assert!(!l.contains("t", "198.51.101.1", 0));
        assert!(l.contains("t", "2001:db8:1::5", 0));
        assert!(!l.contains("t", "2001:db9::5", 0));
        // The mapped network is read as 192.0.2.0/24; a mapped address as its IPv4 one.
        assert!(l.contains("t", "192.0.2.9", 0));
        assert!(l.contains("t", "::ffff:198.51.100.1", 0));
        assert!(l.contains("t", "10.1.2.3", 0));
        assert!(!l.contains("t", "not an address", 0));
        assert_eq!(l.len(), 5);
        // Entries themselves, as written otherwise; an address inside a network is not one.
        assert!(l.holds("t", "198.51.100.0/24") && l.holds("t", "2001:DB8::/32"));
        assert!(l.holds("t", "10.1.2.3") && l.holds("t", "::ffff:203.0.113.7"));
        assert!(!l.holds("t", "198.51.100.200") && !l.holds("t", "198.51.0.0/16"));
    }

    #[test]
    fn a_tenants_entries_hold_for_its_events_alone_and_a_blocks_without_one_for_all() {
        let mut l = NamedList::new("blocked_devices", ListKind::Text, "f.toml", 1);
        l.add(None, "emulator-1").unwrap();
        l.add(Some("acme"), "tablet-7f3a").unwrap();
        l.touch(Some("zeta"));
        assert!(l.contains("acme", "tablet-7f3a", 0));
        assert!(!l.contains("other", "tablet-7f3a", 0));
        assert!(l.contains("acme", "emulator-1", 0) && l.contains("other", "emulator-1", 0));
        assert!(!l.contains("acme", "Tablet-7f3a", 0), "compared exactly");
        assert_eq!(l.tenants(), vec![("acme", 1), ("zeta", 0)]);
        assert_eq!((l.len(), l.len_global()), (2, 1));
    }

    #[test]
    fn an_entry_with_an_end_holds_for_events_before_it_and_for_ever_beats_it() {
        let mut l = NamedList::new("blocked_ips", ListKind::Ip, "f.toml", 1);
        l.add_until(None, "203.0.113.7", Some(1_000)).unwrap();
        l.add_until(Some("acme"), "198.51.100.0/24", Some(2_000))
            .unwrap();
        // Listed until two times: the later.
        l.add_until(Some("acme"), "198.51.100.0/24", Some(1_500))
            .unwrap();
        assert!(l.contains("t", "203.0.113.7", 999));
        assert!(!l.contains("t", "203.0.113.7", 1_000), "ended");
        assert!(l.contains("acme", "198.51.100.9", 1_999));
        assert!(!l.contains("acme", "198.51.100.9", 2_000));
        assert!(!l.contains("other", "198.51.100.9", 0), "acme's alone");
        assert!(l.holds("acme", "198.51.100.0/24") && l.holds("t", "203.0.113.7"));
        assert_eq!(l.ending(1_200), (2, 1));
        // For ever beats an end, whichever comes first.
        l.add(None, "203.0.113.7").unwrap();
        l.add(None, "192.0.2.1").unwrap();
        l.add_until(None, "192.0.2.1", Some(5)).unwrap();
        assert!(l.contains("t", "203.0.113.7", i64::MAX - 1));
        assert!(l.contains("t", "192.0.2.1", 10));
        assert_eq!((l.len(), l.ending(0)), (3, (1, 0)));
        let mut t = NamedList::new("blocked_devices", ListKind::Text, "f.toml", 1);
        t.add_until(None, "dev-1", Some(100)).unwrap();
        assert!(t.contains("x", "dev-1", 99) && !t.contains("x", "dev-1", 100));
        assert!(t.add_until(None, " dev", Some(1)).is_err());
    }

    #[test]
    fn values_a_list_cannot_hold_are_refused_with_why() {
        let ip = |v| check_value(ListKind::Ip, v).unwrap_err();
        assert!(ip("10.0.0.1/8").contains("the network is 10.0.0.0/8"));
        assert!(ip("10.0.0.300").contains("not an IP address or a CIDR network"));
        assert!(ip("").contains("empty"));
        assert!(
            check_value(ListKind::Text, " dev-1")
                .unwrap_err()
                .contains("spaces")
        );
        assert!(
            check_value(ListKind::Text, &"x".repeat(MAX_VALUE + 1))
                .unwrap_err()
                .contains("longer than")
        );
        assert!(check_value(ListKind::Text, "dev-1").is_ok());
        let c = |v| canonical(ListKind::Ip, v);
        assert_eq!(c("2001:0DB8::1"), c("2001:db8::1"));
        assert_eq!(c("::ffff:192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(c("10.0.0.0/32").as_deref(), Some("10.0.0.0"));
        assert_eq!(c("nope"), None);
    }
}
