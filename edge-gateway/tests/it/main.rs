//! The gateway through real sockets over the embedded bus: isolation between tenants and
//! players, resume on a second instance and after a restart, acks, the publish API, bad input,
//! slow clients, token expiry and refresh, and the drain. (One test binary: the Kafka and nginx
//! tests live in `kafka.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use pitboss_gateway::Role;
use pitboss_model::live::Target;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn every_client_gets_its_own_messages_and_nothing_of_other_tenants_or_players() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let (t1, t2) = ("acme", "zeta");
    // Who connects, and what each tries to subscribe to: (tenant, subject, role, rooms).
    let mut p1 = gw
        .connect(&env.token(t1, "p1", Role::Player, &["table"]))
        .await;
    let mut p2 = gw.connect(&env.token(t1, "p2", Role::Player, &[])).await;
    let mut q1 = gw
        .connect(&env.token(t2, "p1", Role::Player, &["table"]))
        .await;
    let mut ops1 = gw
        .connect(&env.token(t1, "ops", Role::Operator, &["*"]))
        .await;
    let mut ops2 = gw.connect(&env.token(t2, "ops", Role::Operator, &[])).await;
    // The matrix: (client, channel, allowed).
    let cases = [
        ("p1", "player:acme:p1", true),
        ("p1", "player:acme:p2", false),
        ("p1", "player:zeta:p1", false),
        ("p1", "operator:acme", false),
        ("p1", "room:acme:table", true),
        ("p1", "room:acme:other", false),
        ("p1", "room:zeta:table", false),
        ("p2", "player:acme:p2", true),
        ("p2", "room:acme:table", false),
        ("q1", "player:zeta:p1", true),
        ("q1", "player:acme:p1", false),
        ("q1", "room:zeta:table", true),
        ("q1", "operator:zeta", false),
        ("ops1", "operator:acme", true),
        ("ops1", "operator:zeta", false),
        ("ops1", "player:acme:p1", false),
        ("ops1", "room:acme:table", true),
        ("ops1", "room:zeta:table", false),
        ("ops2", "operator:zeta", true),
        ("ops2", "operator:acme", false),
        ("ops2", "room:zeta:table", false),
    ];
    for (who, channel, allowed) in cases {
        let c = match who {
            "p1" => &mut p1,
            "p2" => &mut p2,
            "q1" => &mut q1,
            "ops1" => &mut ops1,
            _ => &mut ops2,
        };
        let reply = c.subscribe(channel, None).await;
        if allowed {
            assert_eq!(reply["type"], "subscribed", "{who} on {channel}: {reply}");
        } else {
            assert_eq!(reply["type"], "error", "{who} on {channel}: {reply}");
            assert_eq!(reply["code"], "forbidden", "{who} on {channel}: {reply}");
        }
    }
    // One message for every channel of both tenants.
    let mut sent = Vec::new();
    for tenant in [t1, t2] {
        for target in [
            Target::Player("p1".into()),
            Target::Player("p2".into()),
            Target::Room("table".into()),
        ] {
            sent.push(env.publish_push(tenant, target).await);
        }
        sent.push(env.publish_alert(tenant, "p1").await);
    }
    let want = |tenant: &str, what: &[&str]| -> Vec<String> {
        sent.iter()
            .filter(|(t, ch, _)| t == tenant && what.contains(&ch.as_str()))
            .map(|(_, _, id)| id.clone())
            .collect()
    };
    let expect = [
        (&mut p1, want(t1, &["player:acme:p1", "room:acme:table"])),
        (&mut p2, want(t1, &["player:acme:p2"])),
        (&mut q1, want(t2, &["player:zeta:p1", "room:zeta:table"])),
        (&mut ops1, want(t1, &["operator:acme", "room:acme:table"])),
        (&mut ops2, want(t2, &["operator:zeta"])),
    ];
    for (client, mut ids) in expect {
        ids.sort();
        let mut got = client.messages(ids.len()).await;
        got.sort();
        assert_eq!(got, ids);
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_client_resumes_on_a_second_instance_and_after_a_restart_with_nothing_missed_or_repeated()
{
    let env = Env::new().await;
    let a = env.gateway().await;
    let token = env.token("acme", "p1", Role::Player, &[]);
    let mut c = a.connect(&token).await;
    assert_eq!(
        c.subscribe("player:acme:p1", None).await["recovery"],
        "none"
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            env.publish_push("acme", Target::Player("p1".into()))
                .await
                .2,
        );
    }
    assert_eq!(c.messages(3).await, ids);
    let cursor = c.cursor.clone().expect("a cursor");
    drop(c);
    // Missed while away.
    let mut missed = Vec::new();
    for _ in 0..4 {
        missed.push(
            env.publish_push("acme", Target::Player("p1".into()))
                .await
                .2,
        );
    }
    // A second instance, started after: it rebuilt its history from the bus.
    let b = env.gateway().await;
    let mut c = b.connect(&token).await;
    let reply = c.subscribe_collect("player:acme:p1", Some(&cursor)).await;
    assert_eq!(
        reply.subscribed["recovery"], "complete",
        "{:?}",
        reply.subscribed
    );
    assert_eq!(reply.replayed, missed);
    let cursor = c.cursor.clone().unwrap();
    drop(c);
    // The first instance stops; a restarted one (a new process's state) resumes the client too.
    a.stop().await;
    let more = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    let restarted = env.gateway().await;
    let mut c = restarted.connect(&token).await;
    let reply = c.subscribe_collect("player:acme:p1", Some(&cursor)).await;
    assert_eq!(reply.subscribed["recovery"], "complete");
    assert_eq!(reply.replayed, vec![more]);
    // And live delivery goes on.
    let live = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    assert_eq!(c.messages(1).await, vec![live]);
    c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn operators_ack_alerts_and_get_the_unacknowledged_ones_again_on_reconnect() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let token = env.token("acme", "ops", Role::Operator, &[]);
    let mut ops = gw.connect(&token).await;
    ops.subscribe("operator:acme", None).await;
    // A second console of the tenant, on another instance, and one of another tenant.
    let gw2 = env.gateway().await;
    let mut other_console = gw2
        .connect(&env.token("acme", "marina", Role::Operator, &[]))
        .await;
    other_console.subscribe("operator:acme", None).await;
    let mut zeta = gw2
        .connect(&env.token("zeta", "ops", Role::Operator, &[]))
        .await;
    zeta.subscribe("operator:zeta", None).await;
    let a1 = env.publish_alert("acme", "p1").await.2;
    let a2 = env.publish_alert("acme", "p2").await.2;
    assert_eq!(ops.messages(2).await, vec![a1.clone(), a2.clone()]);
    assert_eq!(
        other_console.messages(2).await,
        vec![a1.clone(), a2.clone()]
    );
    let reply = ops
        .request(json!({"type": "ack", "id": 9, "alert_id": a1, "outcome": "confirmed", "note": "called the player"}))
        .await;
    assert_eq!(reply["type"], "acked", "{reply}");
    assert_eq!(reply["id"], 9);
    // Every console of the tenant hears of it, with the outcome and who; no other tenant does.
    for c in [&mut ops, &mut other_console] {
        let f = c.next_alert_acked().await;
        assert_eq!(
            (
                f["channel"].as_str(),
                f["alert_id"].as_str(),
                f["outcome"].as_str(),
                f["operator_id"].as_str()
            ),
            (
                Some("operator:acme"),
                Some(a1.as_str()),
                Some("confirmed"),
                Some("ops")
            ),
            "{f}"
        );
    }
    let heard = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match zeta.next_frame().await {
                Some(f) if f["type"] == "alert_acked" => return f,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(heard.is_err(), "another tenant heard of the ack: {heard:?}");
    // An ack names one of the tenant's alerts that the gateway holds: not another tenant's,
    // and not a made-up id (any number of those were stored, and remembered until they pushed
    // other tenants' acks out of memory). Nothing of either reaches the bus.
    let reply = zeta
        .request(json!({"type": "ack", "id": 3, "alert_id": a2}))
        .await;
    assert_eq!(reply["code"], "unknown_alert", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains(a2.as_str()) && m.contains("tenant zeta")),
        "{reply}"
    );
    let made_up = "0193a1b2-0000-7000-8000-000000000000";
    let reply = ops
        .request(json!({"type": "ack", "id": 4, "alert_id": made_up}))
        .await;
    assert_eq!(reply["code"], "unknown_alert", "{reply}");
    // The ack is on the bus, with the operator from the token.
    let acks = env
        .read_all::<pitboss_model::live::AlertAck>("alert_acks")
        .await;
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].alert_id.as_str(), acks[0].operator_id.as_str()),
        (a1.as_str(), "ops")
    );
    // A player cannot ack.
    let mut p = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    let reply = p.request(json!({"type": "ack", "alert_id": a2})).await;
    assert_eq!(reply["code"], "forbidden");
    // Reconnect (without a cursor): the unacknowledged alert comes again, the acked one not.
    drop(ops);
    env.wait_until(|| async { gw.hub_acked(&a1) }).await;
    let mut ops = gw.connect(&token).await;
    let reply = ops.subscribe_collect("operator:acme", None).await;
    assert_eq!(reply.replayed, vec![a2]);
}

/// docs/gateway.md, "Operator acks": an ack the bus does not confirm answers `bus_unavailable`
/// naming the `ack_id` the gateway chose; a retry with that id, once the gateway has read the
/// stored write back, is acked under it without a second write (the ack keeps its note), and
/// the alert is acknowledged.
#[tokio::test]
async fn an_unconfirmed_ack_names_its_ack_id_and_a_retry_with_it_is_the_same_ack() {
    let (env, failing) = Env::failing("alert_acks").await;
    let gw = env.gateway().await;
    let token = env.token("acme", "ops", Role::Operator, &[]);
    let mut ops = gw.connect(&token).await;
    ops.subscribe("operator:acme", None).await;
    let a1 = env.publish_alert("acme", "p1").await.2;
    assert_eq!(ops.messages(1).await, vec![a1.clone()]);
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let reply = ops
        .request(json!({"type": "ack", "id": 5, "alert_id": a1, "outcome": "confirmed", "note": "called the player"}))
        .await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["code"].as_str(),
            reply["id"].as_i64()
        ),
        (Some("error"), Some("bus_unavailable"), Some(5)),
        "{reply}"
    );
    let message = reply["message"].as_str().unwrap();
    let ack_id = message
        .split("retry with ack_id \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no ack_id in {message:?}"))
        .to_owned();
    assert!(uuid::Uuid::parse_str(&ack_id).is_ok(), "{ack_id}");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    // The gateway reads the stored write back from the bus; the retry (without the note, as a
    // client that rebuilt its request might send it) is then the same ack: answered, not
    // written again (which would move its time and drop the note).
    env.wait_until(|| async { gw.hub_acked(&a1) }).await;
    let reply = ops
        .request(json!({"type": "ack", "id": 6, "alert_id": a1, "outcome": "confirmed", "ack_id": ack_id}))
        .await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["ack_id"].as_str(),
            reply["id"].as_i64()
        ),
        (Some("acked"), Some(ack_id.as_str()), Some(6)),
        "{reply}"
    );
    let acks = env
        .read_all::<pitboss_model::live::AlertAck>("alert_acks")
        .await;
    assert_eq!(acks.len(), 1, "the unconfirmed write only: {acks:?}");
    assert_eq!(
        (
            acks[0].ack_id.as_str(),
            acks[0].alert_id.as_str(),
            acks[0].note.as_deref()
        ),
        (ack_id.as_str(), a1.as_str(), Some("called the player"))
    );
    drop(ops);
    let a2 = env.publish_alert("acme", "p2").await.2;
    env.wait_until(|| async { gw.history_len().0 == 2 }).await;
    let mut ops = gw.connect(&token).await;
    let got = ops.subscribe_collect("operator:acme", None).await;
    assert_eq!(
        got.replayed,
        vec![a2.clone()],
        "the acked alert is not replayed"
    );
    // The same ack_id for another alert is refused: acks are stored one per ack id, so it
    // would replace the first.
    let reply = ops
        .request(json!({"type": "ack", "id": 7, "alert_id": a2, "outcome": "confirmed", "ack_id": ack_id}))
        .await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["code"].as_str(),
            reply["id"].as_i64()
        ),
        (Some("error"), Some("invalid_ack"), Some(7)),
        "{reply}"
    );
    assert!(reply["message"].as_str().unwrap().contains(&a1), "{reply}");
    let acks = env
        .read_all::<pitboss_model::live::AlertAck>("alert_acks")
        .await;
    assert_eq!(acks.len(), 1, "nothing written: {acks:?}");
}

/// An ack id names its ack for as long as the gateway remembers the alert's acks, also once a
/// later ack superseded it (an outside audit: reused for another alert, it was accepted and
/// replaced the first ack's stored row). Its retry is answered without a write (written again
/// it would undo the later ack); the same id with another outcome is refused (it was answered
/// `acked` and changed nothing).
#[tokio::test]
async fn a_superseded_ack_id_still_names_its_ack_and_an_outcome_needs_its_own_id() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut ops = gw
        .connect(&env.token("acme", "ops", Role::Operator, &[]))
        .await;
    ops.subscribe("operator:acme", None).await;
    let a1 = env.publish_alert("acme", "p1").await.2;
    let a2 = env.publish_alert("acme", "p2").await.2;
    assert_eq!(ops.messages(2).await, vec![a1.clone(), a2.clone()]);
    let (k, l) = (
        "0193d1a7-5e21-7b40-9c3d-4e5f6a7b8c01",
        "0193d1a7-5e21-7b40-9c3d-4e5f6a7b8c02",
    );
    let ack = |id: i64, alert: &str, outcome: &str, ack_id: &str| json!({"type": "ack", "id": id, "alert_id": alert, "outcome": outcome, "ack_id": ack_id});
    let reply = ops.request(ack(1, &a1, "acknowledged", k)).await;
    assert_eq!(reply["type"], "acked", "{reply}");
    env.wait_until(|| async { gw.hub_acked(&a1) }).await;
    // The same id with another outcome: not a retry.
    let reply = ops.request(ack(2, &a1, "escalated", k)).await;
    assert_eq!(reply["code"], "invalid_ack", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("as acknowledged") && m.contains("its own ack_id")),
        "{reply}"
    );
    // A later ack of a1 under its own id supersedes the first.
    let reply = ops.request(ack(3, &a1, "confirmed", l)).await;
    assert_eq!(reply["type"], "acked", "{reply}");
    let read = || async {
        env.read_all::<pitboss_model::live::AlertAck>("alert_acks")
            .await
    };
    env.wait_until(|| async { read().await.len() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // k still names a1's first ack: refused for a2, and a retry of it writes nothing.
    let reply = ops.request(ack(4, &a2, "confirmed", k)).await;
    assert_eq!(reply["code"], "invalid_ack", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains(&a1), "{reply}");
    let reply = ops.request(ack(5, &a1, "acknowledged", k)).await;
    assert_eq!(
        (reply["type"].as_str(), reply["ack_id"].as_str()),
        (Some("acked"), Some(k)),
        "{reply}"
    );
    // …and with another outcome it is refused, superseded or not.
    let reply = ops.request(ack(6, &a1, "escalated", k)).await;
    assert_eq!(reply["code"], "invalid_ack", "{reply}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acks = read().await;
    assert_eq!(
        acks.iter()
            .map(|a| (a.ack_id.as_str(), a.alert_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(k, a1.as_str()), (l, a1.as_str())],
        "two acks of a1, nothing more"
    );
}

/// An alert older than the history and not acknowledged is still delivered on subscribe — also
/// by a gateway started afterwards (it reads the open span of `alerts` and `alert_acks` again);
/// an acknowledged one is not.
#[tokio::test]
async fn unacknowledged_alerts_older_than_the_history_survive_a_restart() {
    let env = Env::new().await;
    let short = |c: &mut pitboss_gateway::GatewayConfig| c.hub.history_max_age_ms = 500;
    let gw = env.gateway_with(short).await;
    let token = env.token("acme", "ops", Role::Operator, &[]);
    let mut ops = gw.connect(&token).await;
    ops.subscribe("operator:acme", None).await;
    let a1 = env.publish_alert("acme", "p1").await.2;
    let a2 = env.publish_alert("acme", "p2").await.2;
    assert_eq!(ops.messages(2).await, vec![a1.clone(), a2.clone()]);
    let reply = ops
        .request(json!({"type": "ack", "id": 3, "alert_id": a1, "outcome": "false_positive"}))
        .await;
    assert_eq!(reply["type"], "acked", "{reply}");
    drop(ops);
    // Past the history's age: a later record evicts both from the history.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut ops = gw.connect(&token).await;
    ops.subscribe("operator:acme", None).await;
    let a3 = env.publish_alert("acme", "p3").await.2;
    assert_eq!(ops.messages(1).await, vec![a3.clone()]);
    drop(ops);
    let mut ops = gw.connect(&token).await;
    let got = ops.subscribe_collect("operator:acme", None).await;
    assert_eq!(
        got.replayed,
        vec![a2.clone(), a3.clone()],
        "a2 outlived the history"
    );
    drop(ops);
    gw.stop().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let gw = env.gateway_with(short).await;
    let mut ops = gw.connect(&token).await;
    let got = ops.subscribe_collect("operator:acme", None).await;
    assert_eq!(
        got.replayed,
        vec![a2, a3],
        "after a restart: the open alerts, not the acknowledged one"
    );
}

#[tokio::test]
async fn operators_publish_pushes_through_the_bus_and_players_may_not() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut player = gw
        .connect(&env.token("acme", "p7", Role::Player, &[]))
        .await;
    player.subscribe("player:acme:p7", None).await;
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let body = json!({"target": {"player": "p7"}, "kind": "operator.message", "title": "Hello", "body": "Your bonus is ready"});
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["push_id"].as_str().unwrap().to_owned();
    assert_eq!(answer["channel"], "player:acme:p7");
    let frame = player.next_message().await;
    assert_eq!(frame["id"], id.as_str());
    assert_eq!(frame["data"]["source"]["operator"]["operator_id"], "ops");
    assert_eq!(frame["data"]["tenant_id"], "acme");
    // The operator's tenant is the token's: nothing can be sent into another tenant.
    let (status, answer) = gw
        .post(
            "/v1/publish",
            Some(&env.token("acme", "p7", Role::Player, &[])),
            &body,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, answer) = gw.post("/v1/publish", None, &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("token_missing"))
    );
    let (status, answer) = gw
        .post(
            "/v1/publish",
            Some(&ops),
            &json!({"target": {"player": "p7"}, "kind": "x", "title": "", "body": ""}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // A rule push's id (a UUIDv5 anyone can derive from the rule, the trigger and the target)
    // is refused: under it an operator push would take the rule push's place (the store and
    // the history keep one message per id) and hide an intervention.
    let rule_push = pitboss_model::live::push_id(
        "rg.late_night",
        1,
        "0193735a-0000-7000-8000-000000000001",
        &pitboss_model::live::Target::Player("p7".into()),
    );
    let mut taken = body.clone();
    taken["push_id"] = json!(rule_push);
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &taken).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        answer["error"]["violations"][0]["path"], "push_id",
        "{answer}"
    );
    // The same UUID in upper case would be a second push: refused.
    taken["push_id"] = json!("0193D1A6-2C10-7E8F-8A9B-0C1D2E3F4A5B");
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &taken).await;
    assert_eq!(
        (status, answer["error"]["violations"][0]["code"].as_str()),
        (422, Some("invalid_uuid")),
        "{answer}"
    );
    taken["push_id"] = json!("0193d1a6-2c10-7e8f-8a9b-0c1d2e3f4a5b");
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &taken).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["push_id"], "0193d1a6-2c10-7e8f-8a9b-0c1d2e3f4a5b");
    let (status, answer) = gw
        .post(
            "/v1/publish",
            Some(&ops),
            &json!({"target": {"planet": "p7"}}),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
}

/// Open sockets count under `--max-connections` (hyper ends a connection's own count at the
/// WebSocket upgrade): with 2 allowed and 2 players connected, a third connection is closed
/// unanswered; when a player leaves, the place is free again and deliveries go on.
#[tokio::test]
async fn open_sockets_count_under_max_connections() {
    let env = Env::new().await;
    let gw = env.gateway_max_connections(2).await;
    let mut p1 = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    let p2 = gw
        .connect(&env.token("acme", "p2", Role::Player, &[]))
        .await;
    let token = env.token("acme", "p3", Role::Player, &[]);
    let third = tokio::time::timeout(Duration::from_secs(10), gw.try_connect(&token))
        .await
        .expect("refused at once, not left waiting");
    assert!(
        third.is_none(),
        "a third socket was let in over the limit of 2"
    );
    drop(p2);
    let mut p3 = gw
        .connect_within(&token, Duration::from_secs(5))
        .await
        .expect("a player connects once another left");
    p1.subscribe("player:acme:p1", None).await;
    p3.subscribe("player:acme:p3", None).await;
    let (_, _, m1) = env.publish_push("acme", Target::Player("p1".into())).await;
    let (_, _, m3) = env.publish_push("acme", Target::Player("p3".into())).await;
    assert_eq!(p1.messages(1).await, vec![m1]);
    assert_eq!(p3.messages(1).await, vec![m3]);
}

/// A browser sends its token as a subprotocol (`pitboss.token.<jwt>` beside `pitboss.v1`, which
/// the gateway selects), not in the URL, where proxies and load balancers log it; the
/// connection is the token's; a bad token offered that way is refused as any other.
#[tokio::test]
async fn a_token_offered_as_a_subprotocol_connects_without_being_in_the_url() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let token = env.token("acme", "p1", Role::Player, &[]);
    let (mut c, selected) = gw
        .connect_offering(&format!("pitboss.v1, pitboss.token.{token}"))
        .await;
    assert_eq!(selected.as_deref(), Some("pitboss.v1"));
    assert_eq!(c.welcome["subject"], "p1");
    assert_eq!(c.welcome["tenant"], "acme");
    c.subscribe("player:acme:p1", None).await;
    let (_, _, m) = env.publish_push("acme", Target::Player("p1".into())).await;
    assert_eq!(c.messages(1).await, vec![m]);
    // Refused like a token in the URL: before the upgrade, with its code.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{}/v1/ws", gw.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "pitboss.v1, pitboss.token.not-a-jwt".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 401);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "token_malformed");
        }
        other => panic!("{other:?}"),
    }
}

/// One subject holds at most `max_connections_per_subject` sockets at once on an instance:
/// one more is refused `429 too_many_connections` (one token could otherwise take every place
/// under `--max-connections`); other subjects, and the same subject id in another tenant, are
/// unaffected; a closed socket frees its place.
#[tokio::test]
async fn one_subject_holds_at_most_its_share_of_sockets() {
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| c.server.max_connections_per_subject = 2)
        .await;
    let token = env.token("acme", "p1", Role::Player, &[]);
    let first = gw.connect(&token).await;
    let mut second = gw.connect(&token).await;
    assert_eq!(
        gw.refused(Some(&token)).await,
        (429, "too_many_connections".to_owned())
    );
    assert_eq!(gw.state.subjects.held("acme", "p1"), 2);
    let mut other = gw
        .connect(&env.token("acme", "p2", Role::Player, &[]))
        .await;
    let _elsewhere = gw
        .connect(&env.token("lucky", "p1", Role::Player, &[]))
        .await;
    drop(first);
    let mut again = gw
        .connect_within(&token, Duration::from_secs(5))
        .await
        .expect("a place frees when a socket closes");
    second.subscribe("player:acme:p1", None).await;
    again.subscribe("player:acme:p1", None).await;
    other.subscribe("player:acme:p2", None).await;
    let (_, _, m1) = env.publish_push("acme", Target::Player("p1".into())).await;
    assert_eq!(second.messages(1).await, vec![m1.clone()]);
    assert_eq!(again.messages(1).await, vec![m1]);
}

/// A tenant's operator pushes are bounded per second (a leaked or runaway tool cannot flood
/// every player): past the burst, `429 rate_limited` with `Retry-After`, nothing published;
/// another tenant is unaffected.
#[tokio::test]
async fn a_tenants_operator_pushes_are_rate_limited_and_others_are_not() {
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| {
            c.server.publish_per_second = 1;
            c.server.publish_burst = 1;
        })
        .await;
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let push = |p: &str| json!({"target": {"player": p}, "kind": "operator.message", "title": "t", "body": "b"});
    // The burst is at least one full array: 1,000 pushes pass at once…
    let full: Vec<Value> = (0..1000).map(|i| push(&format!("p{i}"))).collect();
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &json!(full)).await;
    assert_eq!(status, 202, "{answer}");
    // …and the next ten are over the budget (one a second: ten seconds away), all of them.
    let ten: Vec<Value> = (0..10).map(|i| push(&format!("q{i}"))).collect();
    let (status, headers, answer) = gw.post_full("/v1/publish", Some(&ops), &json!(ten)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{answer}"
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (5..=11).contains(&retry),
        "the wait for ten pushes at one a second: {retry}"
    );
    assert_eq!(
        env.read_all::<pitboss_model::live::Push>("pushes")
            .await
            .len(),
        1000,
        "nothing of the refused request is published"
    );
    let other = env.token("other", "ops", Role::Operator, &[]);
    let (status, answer) = gw.post("/v1/publish", Some(&other), &push("p1")).await;
    assert_eq!(status, 202, "another tenant has its own budget: {answer}");
}

/// A publish body that stalls is cut with `408 body_timeout` (the token is read only once the
/// body has arrived: without the cut, anyone could hold connections open).
#[tokio::test]
async fn a_publish_body_that_stalls_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| c.server.publish_body_timeout = std::time::Duration::from_millis(300))
        .await;
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("POST /v1/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ops}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("body_timeout") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "held: {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"body_timeout\""), "{text}");
}

/// An array of pushes is one request and one bus write: each push reaches its own channel, the
/// answers come in the array's order, and one invalid push refuses the whole array (nothing
/// published, the violation named by its index).
#[tokio::test]
async fn operators_publish_an_array_of_pushes_at_once_all_or_nothing() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut players = Vec::new();
    for p in ["p1", "p2", "p3"] {
        let mut c = gw.connect(&env.token("acme", p, Role::Player, &[])).await;
        c.subscribe(&format!("player:acme:{p}"), None).await;
        players.push(c);
    }
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let push = |p: &str, title: &str| json!({"target": {"player": p}, "kind": "operator.message", "title": title, "body": "b"});
    // Invalid third push: nothing of the array is published.
    let (status, answer) = gw
        .post(
            "/v1/publish",
            Some(&ops),
            &json!([
                push("p1", "bad batch"),
                push("p2", "bad batch"),
                push("p3", "")
            ]),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_push");
    assert_eq!(answer["error"]["violations"][0]["path"], "[2].title");
    let body = json!([push("p1", "one"), push("p2", "two"), push("p3", "three")]);
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &body).await;
    assert_eq!(status, 202, "{answer}");
    let answers = answer.as_array().unwrap();
    assert_eq!(answers.len(), 3);
    for (i, (player, title)) in players.iter_mut().zip(["one", "two", "three"]).enumerate() {
        assert_eq!(answers[i]["channel"], format!("player:acme:p{}", i + 1));
        // The first message each player gets is this array's, not the refused one's.
        let frame = player.next_message().await;
        assert_eq!(frame["id"], answers[i]["push_id"]);
        assert_eq!(frame["data"]["title"], title);
    }
    // A value of the wrong type is refused naming its place in the array and its field.
    let mut wrong = push("p2", "two");
    wrong["title"] = json!(5);
    let body = json!([push("p1", "one"), wrong]);
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &body).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("[1].title: invalid type: integer `5`, expected a string at line 1"),
        "{message}"
    );
    // Empty and oversized arrays are refused precisely.
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &json!([])).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
    let many: Vec<Value> = (0..1001).map(|_| push("p1", "x")).collect();
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &json!(many)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("malformed")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1001")
    );
    // A body over 1 MiB is answered in the JSON form of every other error.
    // (Just over the limit: the part the gateway does not read fits the socket's buffers, so
    // the client reads the answer rather than a reset.)
    let big: Vec<Value> = (0..345)
        .map(|_| json!({"target": {"player": "p1"}, "kind": "operator.message", "title": "t", "body": "x".repeat(1000), "data": {"k": "y".repeat(2000)}}))
        .collect();
    let (status, answer) = gw.post("/v1/publish", Some(&ops), &json!(big)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{answer}"
    );
}

#[tokio::test]
async fn bad_tokens_and_bad_frames_get_precise_answers_and_other_clients_are_unaffected() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut good = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    good.subscribe("player:acme:p1", None).await;

    // Refused before the upgrade, with the reason.
    assert_eq!(gw.refused(None).await, (401, "token_missing".to_owned()));
    assert_eq!(
        gw.refused(Some("garbage")).await,
        (401, "token_malformed".to_owned())
    );
    let expired = env.token_with("acme", "p1", Role::Player, &[], |c| c.exp -= 7200);
    assert_eq!(
        gw.refused(Some(&expired)).await,
        (401, "token_expired".to_owned())
    );
    let forged = pitboss_gateway::auth::sign_hs256(
        &pitboss_gateway::auth::claims("acme", "p1", Role::Player, vec![], Duration::from_secs(60)),
        b"an attacker's secret, 32 bytes long!",
    )
    .unwrap();
    assert_eq!(
        gw.refused(Some(&forged)).await,
        (401, "token_signature".to_owned())
    );

    let mut bad = gw
        .connect(&env.token("acme", "p2", Role::Player, &[]))
        .await;
    for (frame, code) in [
        ("{", "malformed"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "malformed"),
        (
            r#"{"type":"subscribe","channel":"lobby"}"#,
            "invalid_channel",
        ),
        (
            r#"{"type":"subscribe","channel":"player:acme:p1"}"#,
            "forbidden",
        ),
        (
            r#"{"type":"subscribe","channel":"player:acme:p2","since":"x"}"#,
            "invalid_cursor",
        ),
        (
            r#"{"type":"unsubscribe","channel":"player:acme:p9"}"#,
            "not_subscribed",
        ),
        (
            r#"{"type":"presence","channel":"room:acme:vip"}"#,
            "forbidden",
        ),
    ] {
        let reply = bad.raw(frame).await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], code, "{frame}: {reply}");
    }
    // A burst over the rate (an "acknowledge all" a client retries) is answered rate_limited
    // and the connection stays: rate-limited answers are not invalid requests.
    let mut burst = gw
        .connect(&env.token("acme", "p5", Role::Player, &[]))
        .await;
    let mut limited = 0;
    for i in 0..180 {
        let reply = burst.raw(&format!(r#"{{"type":"ping","id":{i}}}"#)).await;
        if reply["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 60, "{limited} of 180 over a burst of 100");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        burst.raw(r#"{"type":"ping","id":"after"}"#).await["type"],
        "pong"
    );
    // What closes is a flood within 10 s, not the sum of a session: two bursts of a few hundred
    // rate-limited answers, more than 10 s apart (more than 500 in all), leave it open.
    let mut long = gw
        .connect(&env.token("acme", "p6", Role::Player, &[]))
        .await;
    let mut total = 0;
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(10_500)).await;
        }
        for i in 0..420 {
            let reply = long.raw(&format!(r#"{{"type":"ping","id":{i}}}"#)).await;
            if reply["code"] == "rate_limited" {
                total += 1;
            }
        }
    }
    assert!(total > 500, "{total} rate-limited answers in all");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        long.raw(r#"{"type":"ping","id":"still"}"#).await["type"],
        "pong"
    );
    // A flood of requests is rate limited, then the connection is closed (1008).
    let mut flood = gw
        .connect(&env.token("acme", "p3", Role::Player, &[]))
        .await;
    let (code, seen) = flood
        .flood(r#"{"type":"subscribe","channel":"player:acme:p3"}"#, 2000)
        .await;
    assert!(
        seen.iter().any(|c| c == "rate_limited"),
        "{code:?} {seen:?}"
    );
    assert_eq!(code, Some(1008));
    // Said as a flood, not as invalid requests (it sent none).
    assert_eq!(
        seen.last().map(String::as_str),
        Some("close: flooding: too many requests past the rate limit")
    );
    // An oversized frame closes with 1009.
    let mut big = gw
        .connect(&env.token("acme", "p4", Role::Player, &[]))
        .await;
    let text = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(64 * 1024));
    assert_eq!(big.send_and_close_code(&text).await, Some(1009));
    // A frame the protocol does not allow closes with 1002 and says what it was; a text frame
    // that is not UTF-8 with 1007 (RFC 6455 §7.4.1, §8.1): both were dropped without a close
    // frame, and a 200-byte ping was closed as "too big" (1009).
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let mut pinger = gw
        .connect(&env.token("acme", "p4", Role::Player, &[]))
        .await;
    let (code, reason) = pinger
        .send_frame_and_close(Frame::ping(vec![b'x'; 200]))
        .await;
    assert_eq!(code, Some(1002), "{reason}");
    assert!(reason.contains("Control frame too big"), "{reason}");
    let mut garbled = gw
        .connect(&env.token("acme", "p4", Role::Player, &[]))
        .await;
    let (code, reason) = garbled
        .send_frame_and_close(Frame::message(
            vec![b'{', 0xff, 0xfe, b'}'],
            OpCode::Data(Data::Text),
            true,
        ))
        .await;
    assert_eq!(code, Some(1007), "{reason}");
    // 64 subscriptions per connection: the 65th channel is refused, the connection stays.
    let mut many = gw
        .connect(&env.token("acme", "ops", Role::Operator, &["*"]))
        .await;
    for i in 0..64 {
        let reply = many
            .raw(&format!(
                r#"{{"type":"subscribe","id":{i},"channel":"room:acme:r{i}"}}"#
            ))
            .await;
        assert_eq!(reply["type"], "subscribed", "{i}: {reply}");
    }
    let reply = many
        .raw(r#"{"type":"subscribe","id":64,"channel":"room:acme:r64"}"#)
        .await;
    assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
    assert_eq!(many.raw(r#"{"type":"ping","id":1}"#).await["type"], "pong");
    // Invalid requests (not rate-limited ones) are answered up to 50; the 51st closes (1008).
    let mut wrong = gw
        .connect(&env.token("acme", "p6", Role::Player, &[]))
        .await;
    for i in 0..50 {
        let reply = wrong.raw(r#"{"type":"teleport"}"#).await;
        assert_eq!(reply["code"], "unknown_type", "{i}: {reply}");
    }
    assert_eq!(
        wrong.send_and_close_code(r#"{"type":"teleport"}"#).await,
        Some(1008)
    );
    // The well-behaved client still gets its pushes.
    let id = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    assert_eq!(good.messages(1).await, vec![id]);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_the_others_get_everything() {
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| {
            c.server.queue_capacity = 1000;
        })
        .await;
    let token = env.token("acme", "p1", Role::Player, &["hall"]);
    let mut reader = gw.connect(&token).await;
    reader.subscribe("room:acme:hall", None).await;
    let mut stalled = gw.connect(&token).await;
    stalled.subscribe("room:acme:hall", None).await;
    let stalled = stalled.stop_reading();
    // Enough bytes to fill the kernel's socket buffers and the queue many times over, in
    // bursts the reading client keeps up with.
    let n = 10_000;
    let body = "x".repeat(990);
    let mut ids = Vec::new();
    let reading = tokio::spawn(async move { reader.messages(n).await });
    for chunk in 0..(n / 100) {
        ids.extend(
            env.publish_pushes("acme", Target::Room("hall".into()), 100, &body, chunk)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = reading.await.unwrap();
    assert_eq!(got, ids, "the reading client got every push, in order");
    // The gateway closed it (4008 when the close frame still fits in the socket; a stalled
    // peer may only see the connection end).
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("pitboss_gateway_closes_total{code=\"4008\"}"),
        "{metrics}"
    );
    let (code, reason) = stalled.close_code().await;
    assert!(code.is_none() || code == Some(4008), "{code:?} {reason}");
}

/// A client that stops reading for a moment, long enough for its queue to fill, and then reads
/// again gets the close frame that says why (4008, "slow consumer") behind what its socket
/// held: the gateway gave that frame a second and dropped the connection, so a client reading
/// again after two seen only the connection end (1006), like a network drop (an outside
/// client developer's audit).
#[tokio::test]
async fn a_client_that_pauses_too_long_is_told_it_was_a_slow_consumer() {
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| {
            c.server.queue_capacity = 100;
            // The close frame's wait, far above this test's pause (the publishing left after
            // the close, then 2 s) however slow the machine.
            c.server.write_timeout = Duration::from_secs(60);
        })
        .await;
    let token = env.token("acme", "p1", Role::Player, &["hall"]);
    let mut slow = gw.connect(&token).await;
    slow.subscribe("room:acme:hall", None).await;
    let slow = slow.stop_reading();
    // About 8 MB: past its queue and what the kernel's socket buffers hold, so the gateway
    // closes it partway (the metrics are the process's, shared with the other tests: no
    // signal of this connection's close). Then two seconds more before it reads again.
    let body = "x".repeat(990);
    for chunk in 0..80 {
        env.publish_pushes("acme", Target::Room("hall".into()), 100, &body, chunk)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, reason) = slow.close_code().await;
    assert_eq!(code, Some(4008), "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
}

#[tokio::test]
async fn a_token_expires_on_a_live_connection_unless_refreshed() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let short = |secs: u64| {
        env.token_with("acme", "p1", Role::Player, &["a"], move |c| {
            c.exp = jsonwebtoken_now() + secs;
        })
    };
    let mut c = gw.connect(&short(2)).await;
    c.subscribe("room:acme:a", None).await;
    // A refresh for another subject is refused; a good one extends the connection and drops
    // rooms it no longer allows.
    let other = env.token("acme", "p2", Role::Player, &[]);
    let reply = c.request(json!({"type": "refresh", "token": other})).await;
    assert_eq!(reply["code"], "token_mismatch");
    let fresh = env.token_with("acme", "p1", Role::Player, &[], |c| {
        c.exp = jsonwebtoken_now() + 4
    });
    let frames = c
        .request_all(
            json!({"type": "refresh", "id": 1, "token": fresh}),
            "refreshed",
        )
        .await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "unsubscribed" && f["channel"] == "room:acme:a"),
        "{frames:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.request(json!({"type": "ping"})).await["type"],
        "pong",
        "still open after the first token's expiry"
    );
    let (code, _) = c.close_code().await;
    assert_eq!(code, Some(4001));
}

#[tokio::test]
async fn on_shutdown_clients_are_told_to_reconnect_and_closed_with_1012() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut c = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    c.subscribe("player:acme:p1", None).await;
    gw.shutdown.trigger("test");
    let next = c.next_frame().await.expect("a frame");
    assert_eq!(next["type"], "reconnect");
    assert_eq!(c.close_code().await.0, Some(1012));
    assert_ne!(gw.ready().await, 200, "not ready while draining");
}

/// docs/gateway.md, "Operations": on SIGTERM the process exits once every connection has
/// closed, requests in flight included, or when the drain timeout (3 s here) has passed. Two
/// publishes are in flight when the stop comes: one whose body then arrives is answered; the
/// gateway does not wait for the one whose body never does (its body timeout set to 30 s) past
/// the deadline: it stops with that request unanswered. A WebSocket client that never answers
/// the close frame is beside them.
#[tokio::test]
async fn the_drain_answers_requests_in_flight_and_drops_what_outlives_its_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| c.server.publish_body_timeout = Duration::from_secs(30))
        .await;
    // Connected, then never read again: the close frame is never answered.
    let silent = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ops}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    let mut finishing = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for s in [&mut finishing, &mut stalled] {
        s.write_all(head.as_bytes()).await.unwrap();
    }
    // Both requests are in their handlers (their bodies being read) before the stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw.shutdown.trigger("test");
    // The rest of one body (an empty JSON object, padded to its length) arrives while draining.
    finishing
        .write_all(format!("{}}}", " ".repeat(98)).as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    finishing.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 ") && !answer.contains("body_timeout"),
        "a request in flight at the stop is answered: {answer:?}"
    );
    // The other is not waited for past the deadline: the gateway stops while it is still
    // unanswered (its 30 s body timeout not reached; the process's exit then closes it).
    tokio::time::timeout(Duration::from_secs(25), gw.task)
        .await
        .expect("the gateway stopped at its drain deadline")
        .unwrap()
        .unwrap();
    let mut buf = [0u8; 64];
    let unanswered = stalled.try_read(&mut buf);
    assert!(
        matches!(&unanswered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled request was answered or closed before the stop: {unanswered:?}"
    );
    drop(silent);
}

#[tokio::test]
async fn time_to_notify_is_measured_per_delivered_message() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut c = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    c.subscribe("player:acme:p1", None).await;
    env.publish_push("acme", Target::Player("p1".into())).await;
    c.messages(1).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("pitboss_time_to_notify_seconds_bucket{kind=\"push\",le=\"10\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("pitboss_gateway_messages_delivered_total{kind=\"push\"}"));
    // The recorder is the process's: other tests' messages count too, so compare before/after.
    let late = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("pitboss_gateway_messages_late_total{kind=\"push\"} "))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let before = late(&metrics);

    // A push whose event was received 30 s ago is delivered late; the next, on time, is not.
    let mut old = env.push_for("acme", Target::Player("p1".into()));
    old.received_at =
        pitboss_model::Timestamp::from_millis(pitboss_model::Timestamp::now().as_millis() - 30_000);
    env.publish_built_push(&old).await;
    env.publish_push("acme", Target::Player("p1".into())).await;
    c.messages(2).await;
    let metrics = gw.metrics().await;
    assert_eq!(late(&metrics), before + 1, "{metrics}");
}

/// A store that answers with the tenant it was asked about, or fails for one tenant.
struct FakeStore;

#[async_trait::async_trait]
impl pitboss_gateway::StatsSource for FakeStore {
    async fn tenant_stats(&self, tenant: &str) -> Result<Value, String> {
        if tenant == "broken" {
            return Err("store unavailable".into());
        }
        Ok(json!({"events_per_second": 12.5, "asked_for": tenant}))
    }
}

#[tokio::test]
async fn operators_read_their_own_tenants_figures_and_the_console_is_served() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut c = gw
        .connect(&env.token("acme", "p1", Role::Player, &[]))
        .await;
    c.subscribe("player:acme:p1", None).await;
    env.publish_push("acme", Target::Player("p1".into())).await;
    c.messages(1).await;
    let ops = env.token("acme", "ops", Role::Operator, &[]);
    let (status, headers, body) = gw.get("/v1/stats", Some(&ops)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["store"], false);
    assert_eq!(body["time_to_notify"]["count"], 1, "{body}");
    assert!(body["time_to_notify"]["p99_ms"].as_u64().is_some());
    // Another tenant's operators see nothing of acme's deliveries.
    let (_, _, other) = gw
        .get(
            "/v1/stats",
            Some(&env.token("globex", "ops", Role::Operator, &[])),
        )
        .await;
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["tenant"], "globex");
    assert_eq!(other["time_to_notify"], Value::Null);
    // Players may not read them; a request without a token is refused.
    let (status, _, body) = gw
        .get(
            "/v1/stats",
            Some(&env.token("acme", "p1", Role::Player, &[])),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""));
    let (status, _, body) = gw.get("/v1/stats", None).await;
    assert_eq!(status, 401);
    assert!(body.contains("token_missing"));

    // The console: the page and its files, with a policy that allows nothing else.
    let (status, headers, page) = gw.get("/console", None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(csp.contains("connect-src 'self';"), "no other host: {csp}");
    assert!(page.contains("/console/app.js"));
    let (status, headers, js) = gw.get("/console/app.js", None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(js.contains("/v1/stats"));
    let (status, _, _) = gw.get("/console/app.css", None).await;
    assert_eq!(status, 200);
    let (status, headers, _) = gw.get("/", None).await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/console".parse().unwrap())
    );
    assert_eq!(gw.get("/console/other.js", None).await.0, 404);
}

#[tokio::test]
async fn a_stats_source_adds_the_tenants_figures_and_its_failure_is_reported() {
    let env = Env::new().await;
    let gw = env.gateway_with_stats(std::sync::Arc::new(FakeStore)).await;
    let (status, _, body) = gw
        .get(
            "/v1/stats",
            Some(&env.token("acme", "ops", Role::Operator, &[])),
        )
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (body["store"].clone(), body["asked_for"].clone()),
        (json!(true), json!("acme"))
    );
    assert_eq!(body["events_per_second"], 12.5);
    let (status, _, body) = gw
        .get(
            "/v1/stats",
            Some(&env.token("broken", "ops", Role::Operator, &[])),
        )
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["store_error"], "store unavailable");
}

/// The presence of a room on this instance.
#[tokio::test]
async fn presence_lists_who_is_in_a_room() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut a = gw
        .connect(&env.token("acme", "p1", Role::Player, &["vip"]))
        .await;
    let mut b = gw
        .connect(&env.token("acme", "p2", Role::Player, &["vip"]))
        .await;
    a.subscribe("room:acme:vip", None).await;
    b.subscribe("room:acme:vip", None).await;
    // An operator watching the room is not shown to its players (nor counted).
    let mut ops = gw
        .connect(&env.token("acme", "staff-7", Role::Operator, &["vip"]))
        .await;
    ops.subscribe("room:acme:vip", None).await;
    let reply = a
        .request(json!({"type": "presence", "channel": "room:acme:vip"}))
        .await;
    assert_eq!(reply["connections"], 2);
    assert_eq!(reply["subjects"], json!(["p1", "p2"]));
    let reply = ops
        .request(json!({"type": "presence", "channel": "room:acme:vip"}))
        .await;
    assert_eq!(reply["subjects"], json!(["p1", "p2"]));
    drop(b);
    env.wait_until(|| async { gw.presence("room:acme:vip") == 1 })
        .await;
    let reply = a
        .request(json!({"type": "presence", "channel": "room:acme:vip"}))
        .await;
    assert_eq!(reply["subjects"], json!(["p1"]));
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The receipts on the `deliveries` topic, once `n` are there (fails after 15 s).
async fn receipts(env: &Env, n: usize) -> Vec<pitboss_model::live::Delivery> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<pitboss_model::live::Delivery> = env.read_all("deliveries").await;
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} receipts of {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_delivery_to_a_player_or_an_operator_is_receipted_on_the_bus_live_or_replayed() {
    use pitboss_model::live::{Delivery, LiveMessage, MessageType};
    let env = Env::new().await;
    let gw = env.gateway().await;
    let token = env.token("acme", "p1", Role::Player, &["lobby"]);
    let mut p1 = gw.connect(&token).await;
    let first_conn = p1.welcome["connection"].as_str().unwrap().to_owned();
    p1.subscribe("player:acme:p1", None).await;
    let mut ops = gw
        .connect(&env.token("acme", "ops", Role::Operator, &[]))
        .await;
    let ops_conn = ops.welcome["connection"].as_str().unwrap().to_owned();
    ops.subscribe("operator:acme", None).await;
    let live = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    assert_eq!(p1.messages(1).await, vec![live.clone()]);
    let alert = env.publish_alert("acme", "p1").await.2;
    assert_eq!(ops.messages(1).await, vec![alert.clone()]);
    let cursor = p1.cursor.clone().unwrap();
    drop(p1);
    // Missed while away, replayed on resume; a room push is not receipted (policy `direct`).
    let missed = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    // The gateway has read it (published is not yet read: a resume before that gets it live,
    // not replayed).
    env.wait_until(|| async { gw.history_len().1 == 2 }).await;
    let mut p1 = gw.connect(&token).await;
    let second_conn = p1.welcome["connection"].as_str().unwrap().to_owned();
    assert_ne!(first_conn, second_conn);
    let reply = p1.subscribe_collect("player:acme:p1", Some(&cursor)).await;
    assert_eq!(reply.replayed, vec![missed.clone()]);
    p1.subscribe("room:acme:lobby", None).await;
    let room = env
        .publish_push("acme", Target::Room("lobby".into()))
        .await
        .2;
    assert_eq!(p1.messages(1).await, vec![room.clone()]);

    let got = receipts(&env, 3).await;
    let mut seen: Vec<(String, String, String, String, bool, &str)> = got
        .iter()
        .map(|d| {
            d.validate().unwrap_or_else(|v| panic!("{d:?}: {v:?}"));
            assert_eq!(d.tenant_id, "acme");
            assert_eq!(d.gateway_id, "gateway");
            assert!(d.delivered_at >= d.received_at, "{d:?}");
            (
                d.message_id.clone(),
                d.channel.clone(),
                d.subscriber.clone(),
                d.connection_id.clone(),
                d.replayed,
                match d.message_type {
                    MessageType::Push => "push",
                    MessageType::Alert => "alert",
                },
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        (
            live,
            "player:acme:p1".to_owned(),
            "p1".to_owned(),
            first_conn,
            false,
            "push",
        ),
        (
            alert,
            "operator:acme".to_owned(),
            "ops".to_owned(),
            ops_conn,
            false,
            "alert",
        ),
        (
            missed,
            "player:acme:p1".to_owned(),
            "p1".to_owned(),
            second_conn,
            true,
            "push",
        ),
    ];
    want.sort();
    assert_eq!(seen, want, "no receipt for the room push");
    // Receipts are keyed by tenant and subscriber (a player's land with the player's events).
    let records = {
        let mut reader = env
            .bus
            .reader_all("deliveries", pitboss_bus::ReadFrom::Earliest)
            .await
            .unwrap();
        reader.poll(100, Duration::from_millis(500)).await.unwrap()
    };
    for r in &records {
        let d = Delivery::decode_proto(&r.value).unwrap();
        assert_eq!(r.key, format!("acme:{}", d.subscriber));
        assert_eq!(
            r.headers.get(pitboss_bus::header::TYPE),
            Some(&b"delivery"[..])
        );
    }
    let metrics = gw.metrics().await;
    // (The recorder is shared by the tests of this binary: only its presence is checked.)
    assert!(
        metrics.contains("pitboss_gateway_receipts_published_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn receipts_all_covers_room_pushes_and_off_writes_none() {
    use pitboss_gateway::ReceiptPolicy;
    let env = Env::new().await;
    let all = env
        .gateway_with(|c| c.receipts.policy = ReceiptPolicy::All)
        .await;
    let off = env
        .gateway_with(|c| c.receipts.policy = ReceiptPolicy::Off)
        .await;
    let token = env.token("acme", "p1", Role::Player, &["lobby"]);
    let (mut a, mut o) = (all.connect(&token).await, off.connect(&token).await);
    for c in [&mut a, &mut o] {
        c.subscribe("room:acme:lobby", None).await;
        c.subscribe("player:acme:p1", None).await;
    }
    let room = env
        .publish_push("acme", Target::Room("lobby".into()))
        .await
        .2;
    let direct = env
        .publish_push("acme", Target::Player("p1".into()))
        .await
        .2;
    for c in [&mut a, &mut o] {
        assert_eq!(c.messages(2).await, vec![room.clone(), direct.clone()]);
    }
    let got = receipts(&env, 2).await;
    // Give the `off` gateway time to (wrongly) publish too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_later: Vec<pitboss_model::live::Delivery> = env.read_all("deliveries").await;
    assert_eq!(got.len(), 2);
    assert_eq!(got_later.len(), 2, "the `off` gateway wrote receipts");
    let a_conn = a.welcome["connection"].as_str().unwrap();
    assert!(got.iter().all(|d| d.connection_id == a_conn));
    let mut ids: Vec<&str> = got.iter().map(|d| d.message_id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![room.as_str(), direct.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
}

/// Asks `c` for the presence of `channel` until `holds` (fails after 15 s); the last answer.
async fn presence_until(c: &mut Client, channel: &str, holds: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = c
            .request(json!({"type": "presence", "channel": channel}))
            .await;
        if holds(&reply) {
            return reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never held: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn presence_adds_up_across_instances_and_an_instance_that_drains_leaves_it_at_once() {
    use std::time::Duration as D;
    // A long TTL: what goes away below goes because it was published, not because it expired.
    let shared = |id: &'static str| {
        move |c: &mut pitboss_gateway::GatewayConfig| {
            c.server.gateway_id = id.into();
            c.presence.interval = D::from_millis(200);
            c.presence.ttl = D::from_secs(120);
        }
    };
    let env = Env::new().await;
    let a = env.gateway_with(shared("gw-a")).await;
    let b = env.gateway_with(shared("gw-b")).await;
    let room = "room:acme:vip";
    let token = |sub: &str| env.token("acme", sub, Role::Player, &["vip"]);
    let mut p1 = a.connect(&token("p1")).await;
    let mut p2 = b.connect(&token("p2")).await;
    let mut p3 = b.connect(&token("p3")).await;
    for c in [&mut p1, &mut p2, &mut p3] {
        c.subscribe(room, None).await;
    }
    // Another tenant's room of the same name is not counted.
    let mut z = b
        .connect(&env.token("zeta", "p9", Role::Player, &["vip"]))
        .await;
    z.subscribe("room:zeta:vip", None).await;
    let reply = presence_until(&mut p1, room, |r| r["connections"] == 3).await;
    assert_eq!(reply["subjects"], json!(["p1", "p2", "p3"]));
    assert_eq!(reply["gateways"], 2);
    let reply = presence_until(&mut p2, room, |r| r["connections"] == 3).await;
    assert_eq!(reply["subjects"], json!(["p1", "p2", "p3"]));
    // Someone leaves on b: a sees it within an interval.
    p3.request(json!({"type": "unsubscribe", "channel": room}))
        .await;
    let reply = presence_until(&mut p1, room, |r| r["connections"] == 2).await;
    assert_eq!(reply["subjects"], json!(["p1", "p2"]));
    // b drains: it says it is gone, and a answers for itself alone (long before the TTL).
    b.stop().await;
    let reply = presence_until(&mut p1, room, |r| r["connections"] == 1).await;
    assert_eq!(reply["subjects"], json!(["p1"]));
    assert_eq!(reply["gateways"], 1);
}

/// A connection from which nothing comes is closed 1001 at the idle timeout after its last
/// frame — not at the next ping tick after it (with the default 25 s pings and 60 s timeout
/// that was 75 s) — and one that keeps speaking is not.
#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout_not_at_the_next_ping() {
    let env = Env::new().await;
    let gw = env
        .gateway_with(|c| {
            c.server.ping_interval = Duration::from_secs(600);
            c.server.idle_timeout = Duration::from_secs(3);
        })
        .await;
    let token = env.token("acme", "p1", Role::Player, &[]);
    // Speaking every 500 ms for 4 s: past the timeout since connecting, never idle.
    let mut talker = gw.connect(&token).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = talker.request(json!({"type": "ping"})).await;
        assert_ne!(reply["type"], "error", "{reply}");
    }
    // Silent: closed long before the first ping (600 s), at the timeout.
    // (`close_code` waits 15 s at most: the ping tick would come at 600.)
    let mut silent = gw.connect(&token).await;
    let (code, reason) = silent.close_code().await;
    assert_eq!(code, Some(1001), "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    gw.stop().await;
}

/// Where changes would be made: records them, refuses a list or rule named `nosuch`, fails on
/// `broken`.
#[derive(Default)]
struct FakeRules {
    lists: std::sync::Mutex<Vec<pitboss_gateway::ListChange>>,
    snoozes: std::sync::Mutex<Vec<pitboss_gateway::SnoozeRequest>>,
}

fn fake_outcome(name: &str) -> Result<(), pitboss_gateway::Refusal> {
    match name {
        "nosuch" => Err(pitboss_gateway::Refusal::Refused(
            "the rule set has no \"nosuch\"".into(),
        )),
        "broken" => Err(pitboss_gateway::Refusal::Failed(
            "rules/lists.toml: permission denied".into(),
        )),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl pitboss_gateway::RulesAdmin for FakeRules {
    async fn change_list(
        &self,
        change: pitboss_gateway::ListChange,
    ) -> Result<Vec<String>, pitboss_gateway::Refusal> {
        fake_outcome(&change.list)?;
        let said = format!("changed {}", change.values.len());
        self.lists.lock().unwrap().push(change);
        Ok(vec![said, "reloaded soon".into()])
    }

    async fn snooze(
        &self,
        snooze: pitboss_gateway::SnoozeRequest,
    ) -> Result<Vec<String>, pitboss_gateway::Refusal> {
        fake_outcome(&snooze.rule)?;
        self.snoozes.lock().unwrap().push(snooze);
        Ok(vec!["snoozed".into()])
    }
}

/// docs/gateway.md, "Lists": an operator changes a list of the rules for the operator's own
/// tenant (the token's: the body cannot name another), players and strangers cannot, a
/// gateway beside no rules says where lists are changed, a bad request is refused precisely
/// and passed on to nothing, and a tenant's changes are rate-limited.
#[tokio::test]
async fn operators_change_their_own_tenants_lists_and_nobody_else_can() {
    let env = Env::new().await;
    let ops = env.token("acme", "ops.anna", Role::Operator, &[]);
    // Beside no rules directory: said, in the figures too.
    let gw = env.gateway().await;
    let add = json!({"values": ["tablet-7f3a"]});
    let (status, body) = gw
        .post("/v1/lists/blocked_devices/add", Some(&ops), &add)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_rules");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("with `pitboss rules list add|remove` or `pitboss rules snooze` --rules DIR"),
        "{body}"
    );
    let (_, _, stats) = gw.get("/v1/stats", Some(&ops)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats).unwrap()["lists"],
        false
    );
    gw.stop().await;

    let lists = std::sync::Arc::new(FakeRules::default());
    let gw = env.gateway_with_rules(lists.clone()).await;
    let (_, _, stats) = gw.get("/v1/stats", Some(&ops)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats).unwrap()["lists"],
        true
    );
    let (status, body) = gw
        .post(
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            &json!({"values": ["tablet-7f3a", "emu-0041"], "for": "30d"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"list": "blocked_devices", "tenant": "acme", "action": "add",
               "message": "changed 2\nreloaded soon"})
    );
    let (status, body) = gw
        .post(
            "/v1/lists/blocked_devices/remove",
            Some(&ops),
            &json!({"values": ["emu-0041"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let made = lists.lists.lock().unwrap().clone();
    assert_eq!(
        made,
        [
            pitboss_gateway::ListChange {
                tenant: "acme".into(),
                operator: "ops.anna".into(),
                list: "blocked_devices".into(),
                add: true,
                values: vec!["tablet-7f3a".into(), "emu-0041".into()],
                duration: Some("30d".into()),
                until: None,
            },
            pitboss_gateway::ListChange {
                tenant: "acme".into(),
                operator: "ops.anna".into(),
                list: "blocked_devices".into(),
                add: false,
                values: vec!["emu-0041".into()],
                duration: None,
                until: None,
            },
        ]
    );

    // Who may not, and what is refused: nothing reaches the lists.
    let player = env.token("acme", "p1", Role::Player, &[]);
    let too_many: Vec<String> = (0..1001).map(|i| format!("d{i}")).collect();
    for (path, token, body, status, code) in [
        (
            "/v1/lists/blocked_devices/add",
            None,
            add.clone(),
            401,
            "token_missing",
        ),
        (
            "/v1/lists/blocked_devices/add",
            Some(&player),
            add.clone(),
            403,
            "forbidden",
        ),
        // The tenant is the token's: a body naming one is not a request of this API.
        (
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            json!({"values": ["x"], "tenant": "globex"}),
            400,
            "malformed",
        ),
        (
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            json!({"values": []}),
            400,
            "malformed",
        ),
        (
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            json!({"values": too_many}),
            400,
            "malformed",
        ),
        (
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            json!(["x"]),
            400,
            "malformed",
        ),
        (
            "/v1/lists/blocked_devices/remove",
            Some(&ops),
            json!({"values": ["x"], "for": "1d"}),
            400,
            "malformed",
        ),
        // (A line break would forge lines of the log that says who changed what.)
        (
            "/v1/lists/blocked_devices/add",
            Some(&ops),
            json!({"values": ["ok", "x\n2026-12-08 INFO list changed"]}),
            400,
            "malformed",
        ),
        (
            "/v1/lists/blocked_devices/block",
            Some(&ops),
            add.clone(),
            404,
            "not_found",
        ),
        (
            "/v1/lists/nosuch/add",
            Some(&ops),
            add.clone(),
            400,
            "refused",
        ),
        (
            "/v1/lists/broken/add",
            Some(&ops),
            add.clone(),
            500,
            "failed",
        ),
    ] {
        let (got, answer) = gw.post(path, token.map(String::as_str), &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {answer}"
        );
    }
    assert_eq!(
        lists.lists.lock().unwrap().len(),
        2,
        "nothing more was changed"
    );
    let metrics = gw.metrics().await;
    for (result, n) in [("ok", 2), ("refused", 1), ("failed", 1)] {
        assert!(
            metrics.contains(&format!(
                "pitboss_gateway_rules_changes_total{{kind=\"list\",result=\"{result}\"}} {n}"
            )),
            "{metrics}"
        );
    }

    // A tenant's changes come ten at once at most, then one a second: another tenant's are
    // not held back.
    let mut limited = None;
    for _ in 0..20 {
        let (status, headers, body) = gw
            .post_full("/v1/lists/blocked_devices/add", Some(&ops), &add)
            .await;
        if status == 429 {
            limited = Some((headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    let (headers, body) = limited.expect("rate-limited within 20 changes");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(headers.contains_key("retry-after"));
    let other = env.token("globex", "ops", Role::Operator, &[]);
    let (status, body) = gw
        .post("/v1/lists/blocked_devices/add", Some(&other), &add)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(lists.lists.lock().unwrap().last().unwrap().tenant, "globex");
    gw.stop().await;
}

/// docs/gateway.md, "Snoozes": an operator silences a rule for one group value of the
/// operator's own tenant, as the operator (`by`); players and strangers cannot; a gateway
/// beside no rules says where snoozes are made; a bad request is refused precisely and passed
/// on to nothing.
#[tokio::test]
async fn operators_snooze_a_rule_for_their_own_tenant_and_nobody_else_can() {
    let env = Env::new().await;
    let ops = env.token("acme", "ops.anna", Role::Operator, &[]);
    let snooze = json!({"rule": "fraud.multi_accounting.device", "key": "tablet-7f3a",
                        "alert": "0193735a-1111-5222-8333-444455556666", "for": "30d",
                        "reason": "a family's shared tablet"});
    let gw = env.gateway().await;
    let (status, body) = gw.post("/v1/snoozes", Some(&ops), &snooze).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("no_rules")),
        "{body}"
    );
    let (_, _, stats) = gw.get("/v1/stats", Some(&ops)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats).unwrap()["snoozes"],
        false
    );
    gw.stop().await;

    let rules = std::sync::Arc::new(FakeRules::default());
    let gw = env.gateway_with_rules(rules.clone()).await;
    let (_, _, stats) = gw.get("/v1/stats", Some(&ops)).await;
    assert_eq!(
        serde_json::from_str::<Value>(&stats).unwrap()["snoozes"],
        true
    );
    let (status, body) = gw.post("/v1/snoozes", Some(&ops), &snooze).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"rule": "fraud.multi_accounting.device", "tenant": "acme", "key": "tablet-7f3a",
               "message": "snoozed"})
    );
    assert_eq!(
        rules.snoozes.lock().unwrap().clone(),
        [pitboss_gateway::SnoozeRequest {
            tenant: "acme".into(),
            operator: "ops.anna".into(),
            rule: "fraud.multi_accounting.device".into(),
            key: "tablet-7f3a".into(),
            alert: Some("0193735a-1111-5222-8333-444455556666".into()),
            duration: Some("30d".into()),
            until: None,
            reason: "a family's shared tablet".into(),
        }]
    );

    let player = env.token("acme", "p1", Role::Player, &[]);
    let globex = env.token("globex", "ops", Role::Operator, &[]);
    let with = |k: &str, v: Value| {
        let mut b = snooze.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = snooze.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for (token, body, status, code) in [
        (None, snooze.clone(), 401, "token_missing"),
        (Some(&player), snooze.clone(), 403, "forbidden"),
        // The tenant and who decided are the token's.
        (
            Some(&ops),
            with("tenant", json!("globex")),
            400,
            "malformed",
        ),
        (Some(&ops), with("by", json!("someone")), 400, "malformed"),
        (Some(&ops), without("reason"), 400, "malformed"),
        (Some(&ops), with("reason", json!("  ")), 400, "malformed"),
        (Some(&ops), with("key", json!("")), 400, "malformed"),
        (
            Some(&ops),
            with("key", json!("x".repeat(300))),
            400,
            "malformed",
        ),
        (
            Some(&ops),
            with("reason", json!("ok\nforged line")),
            400,
            "malformed",
        ),
        // (Another tenant's operator: each tenant has a budget of ten at once.)
        (
            Some(&globex),
            with("alert", json!("a\tb")),
            400,
            "malformed",
        ),
        (
            Some(&globex),
            with("alert", json!("x".repeat(257))),
            400,
            "malformed",
        ),
        (Some(&ops), with("rule", json!("nosuch")), 400, "refused"),
        (Some(&ops), with("rule", json!("broken")), 500, "failed"),
    ] {
        let (got, answer) = gw
            .post("/v1/snoozes", token.map(String::as_str), &body)
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        rules.snoozes.lock().unwrap().len(),
        1,
        "nothing more was asked"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("pitboss_gateway_rules_changes_total{kind=\"snooze\",result=\"ok\"} 1"),
        "{metrics}"
    );
    gw.stop().await;
}
