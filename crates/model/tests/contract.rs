//! Contract tests: realistic fixtures of every event type round-trip through JSON and protobuf,
//! every validation rule has a case, validation and decoding never panic, and the checked-in
//! JSON Schema matches the one generated from the types.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pitboss_model::*;
use proptest::prelude::*;

const NOW: i64 = 1_795_870_800_000; // 2026-11-28T13:00:00Z

fn fixtures() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            (p, text)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_event_type_has_a_fixture() {
    let types: BTreeSet<_> = fixtures()
        .iter()
        .map(|(p, t)| {
            decode_event(t.as_bytes())
                .unwrap_or_else(|v| panic!("{p:?}: {v}"))
                .event_type()
        })
        .collect();
    assert_eq!(types, EventType::ALL.into_iter().collect());
}

#[test]
fn fixtures_round_trip_through_json_and_protobuf() {
    for (path, text) in fixtures() {
        let event = decode_event(text.as_bytes()).unwrap_or_else(|v| panic!("{path:?}: {v}"));
        validate(&event, &ValidationConfig::default(), NOW)
            .unwrap_or_else(|v| panic!("{path:?} should be valid: {v:?}"));

        // JSON -> model -> JSON is the identity on canonical input.
        let original: serde_json::Value = serde_json::from_str(&text).expect("json");
        let again = serde_json::to_value(&event).expect("serialize");
        assert_eq!(original, again, "{path:?}: JSON round trip");

        // model -> protobuf bytes -> model is the identity.
        let bytes = encode_proto(&event);
        let back = decode_proto(&bytes).unwrap_or_else(|v| panic!("{path:?}: {v}"));
        assert_eq!(event, back, "{path:?}: protobuf round trip");

        // and the serde Deserialize impl agrees with decode_event.
        let via_serde: Event = serde_json::from_str(&text).expect("serde");
        assert_eq!(event, via_serde);
    }
}

#[test]
fn protobuf_encoding_is_deterministic() {
    for (_, text) in fixtures() {
        let event = decode_event(text.as_bytes()).expect("fixture");
        assert_eq!(encode_proto(&event), encode_proto(&event.clone()));
    }
}

fn fixture(name: &str) -> Event {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    decode_event(&std::fs::read(path).expect("fixture")).expect("valid fixture")
}

fn violations(event: &Event) -> Vec<(String, ViolationCode)> {
    violations_with(event, &ValidationConfig::default())
}

fn violations_with(event: &Event, cfg: &ValidationConfig) -> Vec<(String, ViolationCode)> {
    match validate(event, cfg, NOW) {
        Ok(_) => Vec::new(),
        Err(v) => v.into_iter().map(|v| (v.path, v.code)).collect(),
    }
}

fn one(path: &str, code: ViolationCode) -> Vec<(String, ViolationCode)> {
    vec![(path.to_owned(), code)]
}

fn stake(e: &mut Event) -> &mut Money {
    match &mut e.payload {
        Payload::BetPlaced(b) => &mut b.stake,
        _ => panic!("not a bet"),
    }
}

#[test]
fn rule_event_id_must_be_a_uuid() {
    let mut e = fixture("bet_placed.json");
    e.event_id = Some("not-a-uuid".into());
    assert_eq!(violations(&e), one("event_id", ViolationCode::InvalidUuid));
    e.event_id = Some("0193735a6b2e7c419d3f2a1b4c5d6e7f".into()); // simple form: not canonical
    assert_eq!(violations(&e), one("event_id", ViolationCode::InvalidUuid));
    e.event_id = None; // ingest assigns one
    assert_eq!(violations(&e), vec![]);
}

#[test]
fn rule_required_ids_length_and_charset() {
    let mut e = fixture("bet_placed.json");
    e.tenant_id = String::new();
    e.player_id = "x".repeat(MAX + 1);
    e.session_id = Some("has space".into());
    assert_eq!(
        violations(&e),
        vec![
            ("tenant_id".into(), ViolationCode::Required),
            ("player_id".into(), ViolationCode::TooLong),
            ("session_id".into(), ViolationCode::InvalidCharacters),
        ]
    );
    // ':' separates tenant and player in the bus key, so it is never allowed in an id.
    e = fixture("bet_placed.json");
    e.tenant_id = "a:b".into();
    assert_eq!(
        violations(&e),
        one("tenant_id", ViolationCode::InvalidCharacters)
    );
    e.tenant_id = "t".repeat(65);
    assert_eq!(violations(&e), one("tenant_id", ViolationCode::TooLong));
}
const MAX: usize = pitboss_model::validate::MAX_ID;

#[test]
fn rule_amounts_non_negative_and_under_ceiling() {
    let mut e = fixture("bet_placed.json");
    stake(&mut e).amount_minor = -1;
    assert_eq!(
        violations(&e),
        one("payload.stake.amount_minor", ViolationCode::NegativeAmount)
    );
    stake(&mut e).amount_minor = i64::MAX;
    assert_eq!(
        violations(&e),
        one("payload.stake.amount_minor", ViolationCode::AmountTooLarge)
    );
    let cfg = ValidationConfig {
        max_amount_minor: 1000,
        ..Default::default()
    };
    stake(&mut e).amount_minor = 1001;
    assert_eq!(
        violations_with(&e, &cfg),
        one("payload.stake.amount_minor", ViolationCode::AmountTooLarge)
    );
    stake(&mut e).amount_minor = 0;
    assert_eq!(violations_with(&e, &cfg), vec![]);
}

#[test]
fn rule_currency_is_iso4217_or_configured() {
    let mut e = fixture("bet_placed.json");
    for bad in ["eur", "EURO", "", "XXX", "BTC"] {
        stake(&mut e).currency = bad.into();
        assert_eq!(
            violations(&e),
            one("payload.stake.currency", ViolationCode::InvalidCurrency),
            "{bad}"
        );
    }
    let cfg = ValidationConfig {
        extra_currencies: vec!["BTC".into()],
        ..Default::default()
    };
    assert_eq!(violations_with(&e, &cfg), vec![]);
}

#[test]
fn rule_future_timestamps_rejected_old_ones_flagged_late() {
    let mut e = fixture("bet_placed.json");
    let cfg = ValidationConfig::default();
    e.occurred_at = Timestamp::from_millis(NOW + cfg.max_future_skew_ms + 1);
    assert_eq!(
        violations(&e),
        one("occurred_at", ViolationCode::FutureTimestamp)
    );
    e.occurred_at = Timestamp::from_millis(NOW + cfg.max_future_skew_ms);
    assert_eq!(validate(&e, &cfg, NOW), Ok(Verdict { late: false }));
    e.occurred_at = Timestamp::from_millis(NOW - cfg.late_after_ms - 1);
    assert_eq!(validate(&e, &cfg, NOW), Ok(Verdict { late: true }));
    e.occurred_at = Timestamp::from_millis(-5);
    assert_eq!(
        violations(&e),
        one("occurred_at", ViolationCode::InvalidTimestamp)
    );
}

#[test]
fn rule_odds_ip_country_duration_schema_version() {
    let mut e = fixture("bet_placed.json");
    for bad in ["0.5", "abc", "2.", ".5", "2.123456", "1234567.1", "-2.0"] {
        if let Payload::BetPlaced(b) = &mut e.payload {
            b.odds = Some(bad.into());
        }
        assert_eq!(
            violations(&e),
            one("payload.odds", ViolationCode::InvalidOdds),
            "{bad}"
        );
    }
    let mut l = fixture("login.json");
    if let Payload::Login(p) = &mut l.payload {
        p.ip = "300.1.1.1".into();
        p.country = Some("Germany".into());
    }
    assert_eq!(
        violations(&l),
        vec![
            ("payload.ip".into(), ViolationCode::InvalidIp),
            ("payload.country".into(), ViolationCode::InvalidCountry)
        ]
    );
    // Two upper-case letters are not enough: the code must be assigned.
    for bad in ["UK", "EU", "XX", "ZZ", "de"] {
        let mut l = fixture("login.json");
        if let Payload::Login(p) = &mut l.payload {
            p.country = Some(bad.into());
        }
        assert_eq!(
            violations(&l),
            one("payload.country", ViolationCode::InvalidCountry),
            "{bad}"
        );
    }
    let mut s = fixture("session_ended.json");
    if let Payload::SessionEnded(p) = &mut s.payload {
        p.duration_ms = Some(-1);
    }
    assert_eq!(
        violations(&s),
        one("payload.duration_ms", ViolationCode::InvalidValue)
    );
    let mut v = fixture("logout.json");
    v.schema_version = 2;
    assert_eq!(
        violations(&v),
        one("schema_version", ViolationCode::UnsupportedSchemaVersion)
    );
}

#[test]
fn rule_fields_the_rules_engine_reads() {
    let mut e = fixture("bet_placed.json");
    for (offset, ok) in [
        (-720, true),
        (840, true),
        (0, true),
        (-721, false),
        (841, false),
    ] {
        e.utc_offset_min = Some(offset);
        let expected = if ok {
            vec![]
        } else {
            one("utc_offset_min", ViolationCode::InvalidValue)
        };
        assert_eq!(violations(&e), expected, "{offset}");
    }
    let mut l = fixture("login.json");
    if let Payload::Login(p) = &mut l.payload {
        p.success = true;
        p.failure_reason = Some(LoginFailure::BadCredentials);
    }
    assert_eq!(
        violations(&l),
        one("payload.failure_reason", ViolationCode::InvalidValue)
    );
    for name in ["deposit.json", "withdrawal.json"] {
        let mut d = fixture(name);
        match &mut d.payload {
            Payload::Deposit(p) => p.ip = Some("10.0.0.256".into()),
            Payload::Withdrawal(p) => p.ip = Some("10.0.0.256".into()),
            _ => unreachable!("fixture type"),
        }
        assert_eq!(
            violations(&d),
            one("payload.ip", ViolationCode::InvalidIp),
            "{name}"
        );
    }
    let mut b = fixture("bonus_wagered.json");
    if let Payload::Bonus(p) = &mut b.payload {
        p.wagered = Some(Money::new(-1, "USD"));
        p.wagering_requirement = Some(Money::new(1, "XXQ"));
    }
    assert_eq!(
        violations(&b),
        vec![
            (
                "payload.wagering_requirement.currency".into(),
                ViolationCode::InvalidCurrency
            ),
            (
                "payload.wagered.amount_minor".into(),
                ViolationCode::NegativeAmount
            ),
        ]
    );
    // Amounts one payload compares or subtracts are in one currency: a settlement's stake and
    // payout (the engine's loss is stake − payout), a bonus and its wagering.
    let mut s = fixture("bet_settled_cashout.json");
    if let Payload::BetSettled(p) = &mut s.payload {
        p.stake = Some(Money::new(5, "USD"));
        p.payout = Money::new(7, "EUR");
    }
    assert_eq!(
        violations(&s),
        one("payload.stake.currency", ViolationCode::InvalidCurrency)
    );
    let mut b = fixture("bonus_wagered.json");
    if let Payload::Bonus(p) = &mut b.payload {
        p.amount = Money::new(1000, "EUR");
        p.wagering_requirement = Some(Money::new(5000, "EUR"));
        p.wagered = Some(Money::new(10, "GBP"));
    }
    assert_eq!(
        violations(&b),
        one("payload.wagered.currency", ViolationCode::InvalidCurrency)
    );
    let mut s = fixture("bet_settled_cashout.json");
    if let Payload::BetSettled(p) = &mut s.payload {
        p.stake = Some(Money::new(-5, "GBP"));
    }
    assert_eq!(
        violations(&s),
        one("payload.stake.amount_minor", ViolationCode::NegativeAmount)
    );
}

#[test]
fn rule_custom_events_are_bounded() {
    let mut e = fixture("custom.json");
    let Payload::Custom(c) = &mut e.payload else {
        panic!()
    };
    c.name = "Has Caps".into();
    c.properties
        .insert("BadKey".into(), CustomValue::Integer(1));
    c.properties
        .insert("long".into(), CustomValue::Text("x".repeat(2000)));
    c.properties
        .insert("nan".into(), CustomValue::Number(f64::NAN));
    assert_eq!(
        violations(&e),
        vec![
            ("payload.name".into(), ViolationCode::InvalidCharacters),
            (
                "payload.properties.BadKey".into(),
                ViolationCode::InvalidCharacters
            ),
            ("payload.properties.long".into(), ViolationCode::TooLong),
            (
                "payload.properties.nan".into(),
                ViolationCode::InvalidProperty
            ),
        ]
    );
    let Payload::Custom(c) = &mut e.payload else {
        panic!()
    };
    c.name = "ok".into();
    c.properties = (0..65)
        .map(|i| (format!("k{i}"), CustomValue::Flag(true)))
        .collect();
    assert_eq!(
        violations(&e),
        one("payload.properties", ViolationCode::InvalidProperty)
    );
}

#[test]
fn violations_serialize_with_stable_codes() {
    let v = Violation::new(
        "payload.stake.currency",
        ViolationCode::InvalidCurrency,
        "bad",
    );
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"path":"payload.stake.currency","code":"invalid_currency","message":"bad"})
    );
    assert_eq!(
        ViolationCode::FutureTimestamp.to_string(),
        "future_timestamp"
    );
}

#[test]
fn checked_in_json_schema_matches_the_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema/event.schema.json");
    let generated = pitboss_model::schema::event_schema_text();
    if std::env::var_os("PITBOSS_UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &generated).expect("write schema");
    }
    let checked_in = std::fs::read_to_string(&path)
        .expect("docs/schema/event.schema.json missing: run with PITBOSS_UPDATE_SCHEMA=1");
    assert!(
        checked_in == generated,
        "docs/schema/event.schema.json is stale: rerun `PITBOSS_UPDATE_SCHEMA=1 cargo test -p pitboss-model`"
    );
    // The schema names every event type.
    for t in EventType::ALL {
        assert!(
            generated.contains(&format!("\"{}\"", t.as_str())),
            "schema lacks {t}"
        );
    }
}

/// A JSON value that looks like an event, with each field possibly broken.
fn arb_event_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("EUR"),
            Just("2.50"),
            Just("2026-11-28T10:00:00Z"),
            Just("::1")
        ]
        .prop_map(serde_json::Value::from),
    ];
    let any_json = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let types = prop::sample::select(
        EventType::ALL
            .iter()
            .map(|t| t.as_str().to_owned())
            .chain(["nope".to_owned()])
            .collect::<Vec<_>>(),
    );
    (
        types,
        any_json.clone(),
        any_json,
        "[A-Za-z0-9:@ ]{0,10}",
        any::<i64>(),
    )
        .prop_map(|(kind, payload, extra, id, amount)| {
            let mut p = payload;
            if let Some(obj) = p.as_object_mut() {
                obj.insert(
                    "amount".into(),
                    serde_json::json!({"amount_minor": amount, "currency": "EUR"}),
                );
                obj.insert(
                    "stake".into(),
                    serde_json::json!({"amount_minor": amount, "currency": "EUR"}),
                );
            }
            serde_json::json!({
                "tenant_id": id, "player_id": id, "type": kind,
                "occurred_at": "2026-11-28T10:00:00Z", "payload": p, "x": extra
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_event(&bytes);
        let _ = decode_proto(&bytes);
    }

    #[test]
    fn decode_and_validate_never_panic(mut json in arb_event_json(), drop_extra in any::<bool>()) {
        if drop_extra {
            json.as_object_mut().expect("object").remove("x");
        }
        let bytes = serde_json::to_vec(&json).expect("json");
        if let Ok(event) = decode_event(&bytes) {
            let _ = validate(&event, &ValidationConfig::default(), NOW);
            // Whatever decodes also survives the protobuf round trip unchanged.
            let back = decode_proto(&encode_proto(&event));
            prop_assert_eq!(back.as_ref(), Ok(&event));
        }
    }

    #[test]
    fn validate_never_panics_on_arbitrary_fields(
        tenant in ".{0,80}", player in ".{0,140}", amount in any::<i64>(), currency in ".{0,5}",
        occurred in any::<i64>(), now in any::<i64>(), odds in ".{0,12}", id in ".{0,40}",
    ) {
        let event = Event {
            event_id: Some(id),
            tenant_id: tenant,
            player_id: player,
            session_id: None,
            occurred_at: Timestamp::from_millis(occurred),
            received_at: None,
            schema_version: 1,
            late: false,
            utc_offset_min: None,
            payload: Payload::BetPlaced(BetPlaced {
                bet_id: "b".into(), game_id: "g".into(), round_id: None,
                stake: Money { amount_minor: amount, currency },
                odds: Some(odds), bet_type: None, channel: None, device_id: None, autoplay: false,
            }),
        };
        let _ = validate(&event, &ValidationConfig::default(), now);
    }
}

/// One fixture's top-level members as (key, JSON text) pairs, in the file's order.
fn members(text: &str) -> Vec<(String, String)> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).expect("fixture");
    map.into_iter()
        .map(|(k, v)| (k, serde_json::to_string(&v).expect("json")))
        .collect()
}

fn object(members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).expect("key")))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[test]
fn the_one_pass_decoder_takes_every_fixture_in_any_key_order() {
    for (path, text) in fixtures() {
        let mut m = members(&text);
        let expected = decode_event_exact(text.as_bytes()).expect("fixture");
        // Every rotation puts `payload` before and after `type` at least once.
        for _ in 0..m.len() {
            m.rotate_left(1);
            let json = object(&m);
            assert_eq!(
                decode_event(json.as_bytes()),
                Ok(expected.clone()),
                "{path:?}: {json}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// `decode_event` (one pass when it can) returns exactly what the reference decoder does,
    /// good input or bad: members shuffled, dropped, repeated, nulled, swapped between types.
    #[test]
    fn the_one_pass_decoder_agrees_with_the_reference(
        which in 0usize..64, other in 0usize..64, order in any::<prop::sample::Index>(),
        drop in prop::option::of(any::<prop::sample::Index>()),
        repeat in prop::option::of(any::<prop::sample::Index>()),
        null in prop::option::of(any::<prop::sample::Index>()),
        swap_payload in any::<bool>(), payload_as_array in any::<bool>(),
        unknown in any::<bool>(), escape_key in any::<bool>(),
    ) {
        let all = fixtures();
        let mut m = members(&all[which % all.len()].1);
        let n = m.len();
        m.rotate_left(order.index(n));
        if swap_payload {
            let donor = members(&all[other % all.len()].1);
            if let (Some(p), Some(d)) = (m.iter_mut().find(|(k, _)| k == "payload"), donor.into_iter().find(|(k, _)| k == "payload")) {
                p.1 = d.1;
            }
        }
        if payload_as_array && let Some(p) = m.iter_mut().find(|(k, _)| k == "payload") {
            let v: serde_json::Value = serde_json::from_str(&p.1).expect("json");
            let values: Vec<serde_json::Value> = v.as_object().map(|o| o.values().cloned().collect()).unwrap_or_default();
            p.1 = serde_json::to_string(&values).expect("json");
        }
        if let Some(i) = null {
            let i = i.index(m.len());
            m[i].1 = "null".into();
        }
        if let Some(i) = repeat {
            let i = i.index(m.len());
            let again = m[i].clone();
            m.push(again);
        }
        if let Some(i) = drop {
            let i = i.index(m.len());
            m.remove(i);
        }
        if unknown {
            m.push(("colour".into(), "\"red\"".into()));
        }
        let mut json = object(&m);
        if escape_key {
            json = json.replacen("\"tenant_id\"", "\"tenant\\u005fid\"", 1);
        }
        prop_assert_eq!(decode_event(json.as_bytes()), decode_event_exact(json.as_bytes()), "{}", json);
    }
}
