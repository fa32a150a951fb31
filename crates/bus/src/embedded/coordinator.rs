//! Consumer-group coordination of the embedded log, in process: members of a group split the
//! partitions (sticky, balanced), moves are cooperative (revoke, commit, release, then grant),
//! and a member that does not hand back in time loses its partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::TopicMeta;
use crate::Partition;

/// Identifies one member of one group on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MemberRef {
    pub group: String,
    pub topic_id: i64,
    pub id: u64,
}

#[derive(Debug, Default)]
pub(super) struct Coordinator {
    groups: HashMap<(String, i64), Group>,
    next_member: u64,
}

#[derive(Debug)]
pub(super) struct Group {
    pub owner: Vec<Option<u64>>,
    pub members: BTreeMap<u64, Member>,
    revoke_timeout: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Member {
    /// Partitions to give up, not yet told to the consumer.
    pub revoke_pending: BTreeSet<Partition>,
    /// Partitions the consumer was told to give up and has not released yet.
    pub revoking: BTreeSet<Partition>,
    /// Partitions newly granted, not yet told to the consumer.
    pub granted: BTreeSet<Partition>,
    /// When a revoke must be finished by.
    revoke_deadline: Option<Instant>,
}

impl Coordinator {
    pub(super) fn join(
        &mut self,
        group: &str,
        topic: TopicMeta,
        revoke_timeout: Duration,
    ) -> MemberRef {
        self.next_member += 1;
        let id = self.next_member;
        let g = self
            .groups
            .entry((group.to_owned(), topic.id))
            .or_insert_with(|| Group {
                owner: vec![None; topic.partitions as usize],
                members: BTreeMap::new(),
                revoke_timeout,
            });
        g.members.insert(id, Member::default());
        g.rebalance();
        MemberRef {
            group: group.to_owned(),
            topic_id: topic.id,
            id,
        }
    }

    pub(super) fn group(&mut self, m: &MemberRef) -> Option<&mut Group> {
        self.groups.get_mut(&(m.group.clone(), m.topic_id))
    }

    pub(super) fn leave(&mut self, m: &MemberRef) {
        if let Some(g) = self.group(m) {
            g.members.remove(&m.id);
            for o in g.owner.iter_mut() {
                if *o == Some(m.id) {
                    *o = None;
                }
            }
            g.rebalance();
        }
    }

    pub(super) fn release(&mut self, m: &MemberRef, parts: &[Partition]) {
        if let Some(g) = self.group(m) {
            for &p in parts {
                if g.owner.get(p as usize) == Some(&Some(m.id)) {
                    g.owner[p as usize] = None;
                }
            }
            if let Some(mem) = g.members.get_mut(&m.id) {
                for p in parts {
                    mem.revoking.remove(p);
                }
                if mem.revoking.is_empty() && mem.revoke_pending.is_empty() {
                    mem.revoke_deadline = None;
                }
            }
            g.rebalance();
        }
    }

    pub(super) fn owned_by(&mut self, m: &MemberRef) -> BTreeSet<Partition> {
        self.group(m)
            .map_or_else(BTreeSet::new, |g| g.owned_by(m.id))
    }
}

impl Group {
    pub(super) fn owned_by(&self, id: u64) -> BTreeSet<Partition> {
        (0..self.owner.len() as u32)
            .filter(|&p| self.owner[p as usize] == Some(id))
            .collect()
    }

    /// Sticky balanced target: members keep what they own up to their quota; the rest is
    /// spread over members below quota. Free partitions are granted at once; owned ones that
    /// must move are revoked from their owner first.
    pub(super) fn rebalance(&mut self) {
        let n = self.owner.len();
        let ids: Vec<u64> = self.members.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let mut by_load = ids.clone();
        let load = |id: u64| self.owner.iter().filter(|o| **o == Some(id)).count();
        by_load.sort_by_key(|&id| (std::cmp::Reverse(load(id)), id));
        let (base, extra) = (n / ids.len(), n % ids.len());
        let quota: HashMap<u64, usize> = by_load
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, base + usize::from(i < extra)))
            .collect();
        let mut count: HashMap<u64, usize> = HashMap::new();
        let mut target = vec![None; n];
        for (p, o) in self.owner.iter().enumerate() {
            if let Some(o) = o {
                let c = count.entry(*o).or_default();
                if quota.get(o).is_some_and(|q| *c < *q) {
                    *c += 1;
                    target[p] = Some(*o);
                }
            }
        }
        for t in target.iter_mut().filter(|t| t.is_none()) {
            if let Some(&id) = by_load
                .iter()
                .find(|id| count.get(id).copied().unwrap_or(0) < quota[id])
            {
                *count.entry(id).or_default() += 1;
                *t = Some(id);
            }
        }
        for (p, t) in target.into_iter().enumerate() {
            let p32 = p as u32;
            match (self.owner[p], t) {
                (None, Some(t)) => {
                    self.owner[p] = Some(t);
                    if let Some(m) = self.members.get_mut(&t) {
                        m.granted.insert(p32);
                    }
                }
                (Some(o), Some(t)) if o != t => {
                    if let Some(m) = self.members.get_mut(&o)
                        && m.revoke_pending.insert(p32)
                        && m.revoke_deadline.is_none()
                    {
                        m.revoke_deadline = Some(Instant::now() + self.revoke_timeout);
                    }
                }
                (Some(o), Some(_)) => {
                    if let Some(m) = self.members.get_mut(&o) {
                        m.revoke_pending.remove(&p32);
                    }
                }
                _ => {}
            }
        }
    }

    /// Takes partitions away from members that did not hand them back in time.
    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| m.revoke_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        if late.is_empty() {
            return;
        }
        for id in late {
            tracing::warn!(
                member = id,
                "revoke timed out; partitions reassigned without commit"
            );
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            m.revoke_deadline = None;
            // Everything it was asked to give up, whether or not it was told yet.
            let mut gone = std::mem::take(&mut m.revoke_pending);
            gone.append(&mut m.revoking);
            for p in gone {
                if let Some(o) = self.owner.get_mut(p as usize).filter(|o| **o == Some(id)) {
                    *o = None;
                }
            }
        }
        self.rebalance();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOPIC: TopicMeta = TopicMeta {
        id: 7,
        partitions: 4,
    };

    fn owned(c: &mut Coordinator, m: &MemberRef) -> Vec<Partition> {
        c.owned_by(m).into_iter().collect()
    }

    fn member<'a>(c: &'a mut Coordinator, m: &MemberRef) -> &'a mut Member {
        c.group(m).unwrap().members.get_mut(&m.id).unwrap()
    }

    #[test]
    fn a_lone_member_is_granted_every_partition() {
        let mut c = Coordinator::default();
        let a = c.join("g", TOPIC, Duration::from_secs(30));
        assert_eq!(owned(&mut c, &a), vec![0, 1, 2, 3]);
        assert_eq!(
            member(&mut c, &a).granted,
            BTreeSet::from([0, 1, 2, 3]),
            "told once, as a grant"
        );
    }

    #[test]
    fn a_second_member_gets_half_only_after_the_first_releases_it() {
        let mut c = Coordinator::default();
        let a = c.join("g", TOPIC, Duration::from_secs(30));
        member(&mut c, &a).granted.clear();
        let b = c.join("g", TOPIC, Duration::from_secs(30));
        // Cooperative: nothing moves until A hands back what it is asked to.
        assert_eq!(owned(&mut c, &a), vec![0, 1, 2, 3]);
        assert!(owned(&mut c, &b).is_empty());
        let asked: Vec<Partition> = member(&mut c, &a).revoke_pending.iter().copied().collect();
        assert_eq!(asked.len(), 2, "A keeps its fair share: {asked:?}");
        c.release(&a, &asked);
        assert_eq!(owned(&mut c, &b), asked);
        assert_eq!(owned(&mut c, &a).len(), 2);
        assert_eq!(
            member(&mut c, &b).granted,
            asked.iter().copied().collect::<BTreeSet<_>>()
        );
    }

    #[test]
    fn leaving_frees_partitions_for_the_others_at_once() {
        let mut c = Coordinator::default();
        let a = c.join("g", TOPIC, Duration::from_secs(30));
        let b = c.join("g", TOPIC, Duration::from_secs(30));
        c.leave(&a);
        assert_eq!(owned(&mut c, &b), vec![0, 1, 2, 3]);
        assert!(!c.group(&a).unwrap().members.contains_key(&a.id));
    }

    #[test]
    fn groups_and_topics_are_independent() {
        let mut c = Coordinator::default();
        let a = c.join("g1", TOPIC, Duration::from_secs(30));
        let b = c.join("g2", TOPIC, Duration::from_secs(30));
        let other = TopicMeta {
            id: 8,
            partitions: 2,
        };
        let d = c.join("g1", other, Duration::from_secs(30));
        assert_eq!(owned(&mut c, &a), vec![0, 1, 2, 3]);
        assert_eq!(owned(&mut c, &b), vec![0, 1, 2, 3]);
        assert_eq!(owned(&mut c, &d), vec![0, 1]);
    }

    #[test]
    fn a_member_that_does_not_hand_back_in_time_loses_the_partitions() {
        let mut c = Coordinator::default();
        let a = c.join("g", TOPIC, Duration::from_millis(100));
        let b = c.join("g", TOPIC, Duration::from_millis(100));
        let asked = member(&mut c, &a).revoke_pending.clone();
        assert_eq!(asked.len(), 2);
        // Not yet late: nothing moves.
        c.group(&a).unwrap().expire(Instant::now());
        assert!(owned(&mut c, &b).is_empty());
        c.group(&a)
            .unwrap()
            .expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(owned(&mut c, &b), asked.into_iter().collect::<Vec<_>>());
        // A's commit for them would now be fenced: it no longer owns them.
        assert_eq!(owned(&mut c, &a).len(), 2);
        assert!(member(&mut c, &a).revoke_deadline.is_none());
    }
}
