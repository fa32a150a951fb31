//! Gateway channel names: `player:<tenant>:<player>`, `operator:<tenant>`, `room:<tenant>:<room>`.
//! Ids never contain `:`, so a name parses back into exactly one channel.

use std::fmt;

use crate::live::limits::{MAX_ID, MAX_TENANT_ID};
use crate::validate::{Violation, ViolationCode, id_violation};

/// A channel of the edge gateway: who a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChannelName {
    /// One player's connections: pushes for that player.
    Player {
        tenant_id: String,
        player_id: String,
    },
    /// A tenant's operator consoles: its alerts.
    Operator { tenant_id: String },
    /// Everyone in a room (a live table, a tournament): pushes for the room.
    Room { tenant_id: String, room_id: String },
}

impl ChannelName {
    /// The tenant the channel belongs to.
    pub fn tenant_id(&self) -> &str {
        match self {
            ChannelName::Player { tenant_id, .. }
            | ChannelName::Operator { tenant_id }
            | ChannelName::Room { tenant_id, .. } => tenant_id,
        }
    }

    /// Parses a channel name; `path` is where it came from, for the violation.
    pub fn parse(name: &str, path: &str) -> Result<ChannelName, Violation> {
        let bad = || {
            Violation::new(
                path,
                ViolationCode::InvalidValue,
                "expected player:<tenant>:<player>, operator:<tenant> or room:<tenant>:<room>",
            )
        };
        let mut parts = name.split(':');
        let kind = parts.next().unwrap_or_default();
        let tenant = parts.next().ok_or_else(bad)?;
        let id = parts.next();
        if parts.next().is_some() {
            return Err(bad());
        }
        if let Some(v) = id_violation(path, tenant, MAX_TENANT_ID) {
            return Err(v);
        }
        if let Some(v) = id.and_then(|id| id_violation(path, id, MAX_ID)) {
            return Err(v);
        }
        let tenant_id = tenant.to_owned();
        match (kind, id) {
            ("player", Some(id)) => Ok(ChannelName::Player {
                tenant_id,
                player_id: id.to_owned(),
            }),
            ("operator", None) => Ok(ChannelName::Operator { tenant_id }),
            ("room", Some(id)) => Ok(ChannelName::Room {
                tenant_id,
                room_id: id.to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelName::Player {
                tenant_id,
                player_id,
            } => write!(f, "player:{tenant_id}:{player_id}"),
            ChannelName::Operator { tenant_id } => write!(f, "operator:{tenant_id}"),
            ChannelName::Room { tenant_id, room_id } => write!(f, "room:{tenant_id}:{room_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["player:acme:p-1", "operator:acme", "room:acme:roulette-1"] {
            let c = ChannelName::parse(name, "channel").expect(name);
            assert_eq!(c.to_string(), name);
            assert_eq!(c.tenant_id(), "acme");
        }
    }

    #[test]
    fn malformed_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "player",
            "player:acme",
            "operator:acme:x",
            "room:acme:r:extra",
            "lobby:acme:x",
        ] {
            let v = ChannelName::parse(bad, "channel").expect_err(bad);
            assert_eq!(v.path, "channel");
            assert!(
                matches!(
                    v.code,
                    ViolationCode::InvalidValue | ViolationCode::Required
                ),
                "{bad}: {v}"
            );
        }
        let v = ChannelName::parse("player:ac me:p", "channel").expect_err("space");
        assert_eq!(v.code, ViolationCode::InvalidCharacters);
        let v = ChannelName::parse("player::p", "channel").expect_err("empty tenant");
        assert_eq!(v.code, ViolationCode::Required);
    }
}
