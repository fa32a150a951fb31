//! The gateway's changes to the rules (`POST /v1/lists/{list}/add|remove`, `POST /v1/snoozes`:
//! docs/gateway.md, "Lists" and "Snoozes"), made in a rules directory as `pitboss rules list
//! add|remove` and `pitboss rules snooze` make them: for the operator's tenant alone, once the
//! whole set with the change loads, under the same locks; answered without the server's paths.

use std::path::PathBuf;

use pitboss_gateway::{ListChange, Refusal, RulesAdmin, SnoozeRequest};

/// The most list entries a tenant may hold through the gateway (the set holds
/// [`pitboss_antifraud::rules::MAX_LIST_ENTRIES`] for every tenant together).
pub const MAX_TENANT_ENTRIES: usize = 100_000;

/// The most snoozes in force a tenant may hold through the gateway.
pub const MAX_TENANT_SNOOZES: usize = 10_000;

/// A rules directory the gateway changes.
pub struct RulesDir {
    pub rules: PathBuf,
}

impl RulesDir {
    /// Runs `work` off the async threads (it loads the whole set and waits for a file lock)
    /// and words its answer for the operator.
    async fn run(
        &self,
        work: impl FnOnce(PathBuf) -> anyhow::Result<Vec<String>> + Send + 'static,
    ) -> Result<Vec<String>, Refusal> {
        // Absolute, so that the directory's name in an answer is its path and nothing else
        // (`--rules .` would otherwise match every dot).
        let rules = std::fs::canonicalize(&self.rules).unwrap_or_else(|_| self.rules.clone());
        // Told without the server's paths: the files are the directory's.
        let dir = rules.display().to_string();
        let plain = move |text: String| {
            text.replace(&format!("{dir}/"), "")
                .replace(&dir, "the rules directory")
        };
        match tokio::task::spawn_blocking(move || work(rules)).await {
            Ok(Ok(lines)) => Ok(lines.into_iter().map(&plain).collect()),
            Ok(Err(e)) => Err(match refusal(e) {
                Refusal::Refused(why) => Refusal::Refused(plain(why)),
                failed => failed,
            }),
            Err(e) => Err(Refusal::Failed(e.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl RulesAdmin for RulesDir {
    async fn change_list(&self, c: ListChange) -> Result<Vec<String>, Refusal> {
        self.run(move |rules| {
            let until = if c.add {
                Some(crate::lists::end(
                    c.duration.as_deref(),
                    c.until.as_deref(),
                    ("`for`", "`until`"),
                )?)
            } else {
                None
            };
            let change = crate::lists::Change {
                rules,
                list: c.list,
                tenant: Some(c.tenant),
                values: c.values,
                max_tenant_entries: Some(MAX_TENANT_ENTRIES),
            };
            crate::lists::change(&change, until)
        })
        .await
    }

    async fn snooze(&self, z: SnoozeRequest) -> Result<Vec<String>, Refusal> {
        self.run(move |rules| {
            let until = crate::snooze::until(
                z.duration.as_deref(),
                z.until.as_deref(),
                ("`for`", "`until`"),
                "silence nothing",
            )?;
            let target = crate::snooze::Target {
                tenant: z.tenant,
                rule: z.rule,
                key: z.key,
                group_by: None,
                alert: z.alert,
            };
            crate::snooze::write(
                &rules,
                &target,
                until,
                &z.reason,
                Some(&z.operator),
                Some(MAX_TENANT_SNOOZES),
            )
        })
        .await
    }
}

/// A failed change: the directory not readable or writable is a failure, a set refused as it
/// is too (the operator's request is not what is wrong; its problems, which may quote other
/// tenants' entries, go to the log), anything else a refusal of the request. Nothing is
/// written either way.
fn refusal(e: anyhow::Error) -> Refusal {
    let text = format!("{e:#}");
    if e.chain().any(|c| c.is::<std::io::Error>()) {
        tracing::error!(error = %text, "a change to the rules through the gateway could not be made");
        Refusal::Failed(
            "the rules directory could not be read or written (the gateway's log says why)".into(),
        )
    } else if e.chain().any(|c| c.is::<crate::snooze::SetRefused>()) {
        tracing::error!(error = %text, "a change to the rules through the gateway found the rule set refused");
        Refusal::Failed(
            "the rule set is refused as it is, so nothing can change until it is fixed \
             (`pitboss rules check` where the rules are; the gateway's log says why)"
                .into(),
        )
    } else {
        Refusal::Refused(text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::lists::{Change, change};
    use std::path::Path;

    fn dir_with_fraud_pack() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        for f in ["fraud.toml", "scoring.toml"] {
            std::fs::copy(packs.join(f), dir.path().join(f)).unwrap();
        }
        dir
    }

    fn ask(list: &str, tenant: &str, values: &[&str]) -> ListChange {
        ListChange {
            tenant: tenant.into(),
            operator: "ops".into(),
            list: list.into(),
            add: true,
            values: values.iter().map(|v| v.to_string()).collect(),
            duration: None,
            until: None,
        }
    }

    /// Through the gateway a tenant holds at most `max_tenant_entries` (another tenant's
    /// entries, and those for every tenant, do not count against it); answers name the file,
    /// not the server's directory; a set refused as it is is the server's failure, its
    /// problems (which may quote other tenants' values) left to the log.
    #[tokio::test]
    async fn the_gateways_changes_are_bounded_per_tenant_and_answered_without_server_paths() {
        let dir = dir_with_fraud_pack();
        let of = |tenant: &str, values: &[&str]| Change {
            rules: dir.path().to_path_buf(),
            list: "blocked_devices".into(),
            tenant: Some(tenant.into()),
            values: values.iter().map(|v| v.to_string()).collect(),
            max_tenant_entries: Some(2),
        };
        change(&of("acme", &["d1", "d2"]), Some(None)).unwrap();
        change(&of("globex", &["d1", "d2"]), Some(None)).unwrap();
        let e = change(&of("acme", &["d3"]), Some(None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("tenant \"acme\" would hold 3 list entries, past the 2"),
            "{e}"
        );
        // Values already listed add nothing; a removal is never held back.
        change(&of("acme", &["d1"]), Some(None)).unwrap();
        change(&of("acme", &["d2"]), None).unwrap();
        change(&of("acme", &["d3"]), Some(None)).unwrap();

        let admin = RulesDir {
            rules: dir.path().to_path_buf(),
        };
        let shown = dir.path().display().to_string();
        let said = admin
            .change_list(ask("blocked_devices", "acme", &["tablet-1"]))
            .await
            .unwrap()
            .join("\n");
        assert!(
            said.starts_with(
                "added 1 value to list blocked_devices for tenant \"acme\": lists.toml"
            ),
            "{said}"
        );
        assert!(!said.contains(&shown), "{said}");
        let Err(Refusal::Refused(why)) = admin.change_list(ask("nosuch", "acme", &["x"])).await
        else {
            panic!("refused")
        };
        assert!(
            why.starts_with("the rule set in the rules directory has no list \"nosuch\"")
                && !why.contains(&shown),
            "{why}"
        );

        // A snooze of the operator's tenant, by the operator, in snoozes.toml.
        let z = SnoozeRequest {
            tenant: "acme".into(),
            operator: "ops.anna".into(),
            rule: "fraud.multi_accounting.device".into(),
            key: "tablet-7f3a".into(),
            alert: Some("0193735a-1111-5222-8333-444455556666".into()),
            duration: Some("30d".into()),
            until: None,
            reason: "a family's shared tablet".into(),
        };
        let said = admin.snooze(z.clone()).await.unwrap().join("\n");
        assert!(
            said.starts_with(
                "snoozed fraud.multi_accounting.device for tenant \"acme\", key \"tablet-7f3a\", until "
            ) && said.contains(": snoozes.toml:")
                && !said.contains(&shown),
            "{said}"
        );
        let written = std::fs::read_to_string(dir.path().join("snoozes.toml")).unwrap();
        assert!(
            written.contains("tenant = \"acme\"\nkey = \"tablet-7f3a\"")
                && written.contains("by = \"ops.anna\"")
                && written.contains("alert = \"0193735a-1111-5222-8333-444455556666\""),
            "{written}"
        );
        // The same again is refused with why (one snooze in force per rule, tenant and key);
        // a rule the set does not have, and an end already past, too.
        for (z, want) in [
            (z.clone(), "is already snoozed"),
            (
                SnoozeRequest {
                    rule: "fraud.nosuch".into(),
                    ..z.clone()
                },
                "fraud.nosuch",
            ),
            (
                SnoozeRequest {
                    duration: None,
                    until: Some("2020-01-01T00:00:00Z".into()),
                    ..z.clone()
                },
                "already past",
            ),
            (
                SnoozeRequest {
                    until: Some("2030-01-01T00:00:00Z".into()),
                    ..z.clone()
                },
                "`for` or `until`, not both",
            ),
        ] {
            let Err(Refusal::Refused(why)) = admin.snooze(z).await else {
                panic!("refused: {want}")
            };
            assert!(why.contains(want) && !why.contains(&shown), "{why}");
        }

        // Through the gateway a tenant's snoozes in the file are bounded, ended ones counted,
        // another tenant's not.
        let target = |tenant: &str, key: &str| crate::snooze::Target {
            tenant: tenant.into(),
            rule: "fraud.multi_accounting.ip".into(),
            key: key.into(),
            group_by: None,
            alert: None,
        };
        let soon = pitboss_model::Timestamp::from_millis(
            pitboss_model::Timestamp::now().as_millis() + 60_000,
        );
        let ended = pitboss_model::Timestamp::from_millis(
            pitboss_model::Timestamp::now().as_millis() - 60_000,
        );
        for (tenant, key, until) in [
            ("acme", "a1", ended),
            ("globex", "g1", soon),
            ("globex", "g2", soon),
        ] {
            crate::snooze::write(dir.path(), &target(tenant, key), until, "r", None, Some(2))
                .unwrap();
        }
        // acme: tablet-7f3a and a1 (ended, still in the file) — a third is past 2.
        let e = crate::snooze::write(dir.path(), &target("acme", "a2"), soon, "r", None, Some(2))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("tenant \"acme\" would hold 3 snoozes in the rule set"),
            "{e}"
        );
        let e = crate::snooze::write(
            dir.path(),
            &target("globex", "g3"),
            soon,
            "r",
            None,
            Some(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("would hold 3 snoozes"), "{e}");

        // A set refused as it is (another tenant's bad entry): no detail of it in the answer.
        std::fs::write(
            dir.path().join("other.toml"),
            "[[list]]\nname = \"blocked_ips\"\ntenant = \"globex\"\nvalues = [\"10.0.0.1/8\"]\n",
        )
        .unwrap();
        let Err(Refusal::Failed(why)) = admin
            .change_list(ask("blocked_devices", "acme", &["x"]))
            .await
        else {
            panic!("failed")
        };
        assert!(
            why.starts_with("the rule set is refused as it is") && !why.contains("10.0.0.1"),
            "{why}"
        );
    }
}
