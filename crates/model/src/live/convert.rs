//! Conversion of the live-path messages between the model and the protobuf form, lossless in
//! both directions for every valid message. Reading protobuf never panics: a missing oneof, an
//! unknown or UNSPECIFIED enum value, or a `data_json` that is not a JSON object becomes a
//! violation with a field path.

use pitboss_proto::v1 as pb;

use crate::convert::{bad_enum, enum_map, none_if_empty};
use crate::live::ack::{AckOutcome, AlertAck};
use crate::live::alert::{Alert, Category, Comparison, GroupBy, Measure, Recommendation, Severity};
use crate::live::delivery::{Delivery, MessageType};
use crate::live::push::{OperatorSource, Push, PushSource, RuleSource, Target};
use crate::time::Timestamp;
use crate::validate::{Violation, ViolationCode};

enum_map!(Category, pb::AlertCategory, category_to, category_from, _category_opt, {
    Fraud => Fraud, ResponsibleGambling => ResponsibleGambling,
});
enum_map!(Severity, pb::Severity, severity_to, severity_from, _severity_opt, {
    Info => Info, Low => Low, Medium => Medium, High => High, Critical => Critical,
});
enum_map!(Recommendation, pb::Recommendation, recommendation_to, recommendation_from, _recommendation_opt, {
    None => None, Review => Review, Block => Block,
});
enum_map!(GroupBy, pb::GroupBy, group_by_to, group_by_from, _group_by_opt, {
    Player => Player, Device => Device, Ip => Ip, Session => Session,
    PaymentInstrument => PaymentInstrument, Game => Game,
});
enum_map!(Comparison, pb::Comparison, comparison_to, comparison_from, _comparison_opt, {
    Gt => Gt, Gte => Gte, Lt => Lt, Lte => Lte, Eq => Eq,
});
enum_map!(MessageType, pb::MessageType, message_type_to, message_type_from, _message_type_opt, {
    Alert => Alert, Push => Push,
});
enum_map!(AckOutcome, pb::AckOutcome, outcome_to, outcome_from, _outcome_opt, {
    Acknowledged => Acknowledged, FalsePositive => FalsePositive, Confirmed => Confirmed,
    Escalated => Escalated,
});

fn ms(t: Timestamp) -> i64 {
    t.as_millis()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

impl From<Measure> for pb::Measure {
    fn from(m: Measure) -> Self {
        pb::Measure {
            name: m.name,
            value: m.value,
            threshold: m.threshold,
            comparison: comparison_to(m.comparison),
            currency: m.currency.unwrap_or_default(),
            window_ms: m.window_ms.unwrap_or(0),
            baseline: m.baseline.unwrap_or_default(),
            factor: m.factor,
        }
    }
}

fn measure_from(m: pb::Measure, path: &str) -> Result<Measure, Violation> {
    Ok(Measure {
        name: m.name,
        value: m.value,
        threshold: m.threshold,
        comparison: comparison_from(m.comparison, &format!("{path}.comparison"))?,
        currency: none_if_empty(m.currency),
        window_ms: (m.window_ms != 0).then_some(m.window_ms),
        baseline: none_if_empty(m.baseline),
        factor: m.factor,
    })
}

impl From<Alert> for pb::Alert {
    fn from(a: Alert) -> Self {
        pb::Alert {
            alert_id: a.alert_id,
            tenant_id: a.tenant_id,
            player_id: a.player_id.unwrap_or_default(),
            rule_id: a.rule_id,
            rule_version: a.rule_version,
            category: category_to(a.category),
            severity: severity_to(a.severity),
            score: a.score,
            total_score: a.total_score,
            recommendation: recommendation_to(a.recommendation),
            group_by: group_by_to(a.group_by),
            group_key: a.group_key,
            related_player_ids: a.related_player_ids,
            reason: a.reason,
            measures: a.measures.into_iter().map(pb::Measure::from).collect(),
            trigger_event_id: a.trigger_event_id,
            evidence_event_ids: a.evidence_event_ids,
            event_time_ms: ms(a.event_time),
            received_at_ms: ms(a.received_at),
            detected_at_ms: ms(a.detected_at),
        }
    }
}

impl TryFrom<pb::Alert> for Alert {
    type Error = Violation;

    fn try_from(a: pb::Alert) -> Result<Self, Violation> {
        Ok(Alert {
            alert_id: a.alert_id,
            tenant_id: a.tenant_id,
            player_id: none_if_empty(a.player_id),
            rule_id: a.rule_id,
            rule_version: a.rule_version,
            category: category_from(a.category, "category")?,
            severity: severity_from(a.severity, "severity")?,
            score: a.score,
            total_score: a.total_score,
            recommendation: recommendation_from(a.recommendation, "recommendation")?,
            group_by: group_by_from(a.group_by, "group_by")?,
            group_key: a.group_key,
            related_player_ids: a.related_player_ids,
            reason: a.reason,
            measures: a
                .measures
                .into_iter()
                .enumerate()
                .map(|(i, m)| measure_from(m, &format!("measures[{i}]")))
                .collect::<Result<_, _>>()?,
            trigger_event_id: a.trigger_event_id,
            evidence_event_ids: a.evidence_event_ids,
            event_time: at(a.event_time_ms),
            received_at: at(a.received_at_ms),
            detected_at: at(a.detected_at_ms),
        })
    }
}

fn data_to(data: &serde_json::Map<String, serde_json::Value>) -> String {
    if data.is_empty() {
        return String::new();
    }
    // A map of JSON values always serializes; the fallback is never taken.
    serde_json::to_string(data).unwrap_or_default()
}

fn data_from(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, Violation> {
    if text.is_empty() {
        return Ok(serde_json::Map::new());
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Violation::new(
            "data",
            ViolationCode::Malformed,
            format!("data_json is not JSON: {e}"),
        )
    })?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(Violation::new(
            "data",
            ViolationCode::InvalidType,
            "data_json must be a JSON object",
        )),
    }
}

impl From<Push> for pb::Push {
    fn from(p: Push) -> Self {
        use pb::push::{Source, Target as T};
        let target = match p.target {
            Target::Player(id) => T::PlayerId(id),
            Target::Room(id) => T::RoomId(id),
        };
        let source = match p.source {
            PushSource::Rule(r) => Source::Rule(pb::RuleSource {
                rule_id: r.rule_id,
                rule_version: r.rule_version,
                alert_id: r.alert_id.unwrap_or_default(),
                trigger_event_id: r.trigger_event_id,
            }),
            PushSource::Operator(o) => Source::Operator(pb::OperatorSource {
                operator_id: o.operator_id,
            }),
        };
        pb::Push {
            push_id: p.push_id,
            tenant_id: p.tenant_id,
            target: Some(target),
            kind: p.kind,
            title: p.title,
            body: p.body,
            data_json: data_to(&p.data),
            source: Some(source),
            event_time_ms: ms(p.event_time),
            received_at_ms: ms(p.received_at),
            created_at_ms: ms(p.created_at),
            expires_at_ms: p.expires_at.map_or(0, ms),
        }
    }
}

impl TryFrom<pb::Push> for Push {
    type Error = Violation;

    fn try_from(p: pb::Push) -> Result<Self, Violation> {
        use pb::push::{Source, Target as T};
        let target = match p.target {
            Some(T::PlayerId(id)) => Target::Player(id),
            Some(T::RoomId(id)) => Target::Room(id),
            None => {
                return Err(Violation::new(
                    "target",
                    ViolationCode::Required,
                    "push has no target (player_id or room_id)",
                ));
            }
        };
        let source = match p.source {
            Some(Source::Rule(r)) => PushSource::Rule(RuleSource {
                rule_id: r.rule_id,
                rule_version: r.rule_version,
                alert_id: none_if_empty(r.alert_id),
                trigger_event_id: r.trigger_event_id,
            }),
            Some(Source::Operator(o)) => PushSource::Operator(OperatorSource {
                operator_id: o.operator_id,
            }),
            None => {
                return Err(Violation::new(
                    "source",
                    ViolationCode::Required,
                    "push has no source (rule or operator)",
                ));
            }
        };
        Ok(Push {
            push_id: p.push_id,
            tenant_id: p.tenant_id,
            target,
            kind: p.kind,
            title: p.title,
            body: p.body,
            data: data_from(&p.data_json)?,
            source,
            event_time: at(p.event_time_ms),
            received_at: at(p.received_at_ms),
            created_at: at(p.created_at_ms),
            expires_at: (p.expires_at_ms != 0).then(|| at(p.expires_at_ms)),
        })
    }
}

impl From<Delivery> for pb::Delivery {
    fn from(d: Delivery) -> Self {
        pb::Delivery {
            message_type: message_type_to(d.message_type),
            message_id: d.message_id,
            tenant_id: d.tenant_id,
            channel: d.channel,
            subscriber: d.subscriber,
            gateway_id: d.gateway_id,
            connection_id: d.connection_id,
            delivered_at_ms: ms(d.delivered_at),
            received_at_ms: ms(d.received_at),
            replayed: d.replayed,
        }
    }
}

impl TryFrom<pb::Delivery> for Delivery {
    type Error = Violation;

    fn try_from(d: pb::Delivery) -> Result<Self, Violation> {
        Ok(Delivery {
            message_type: message_type_from(d.message_type, "message_type")?,
            message_id: d.message_id,
            tenant_id: d.tenant_id,
            channel: d.channel,
            subscriber: d.subscriber,
            gateway_id: d.gateway_id,
            connection_id: d.connection_id,
            delivered_at: at(d.delivered_at_ms),
            received_at: at(d.received_at_ms),
            replayed: d.replayed,
        })
    }
}

impl From<AlertAck> for pb::AlertAck {
    fn from(a: AlertAck) -> Self {
        pb::AlertAck {
            ack_id: a.ack_id,
            alert_id: a.alert_id,
            tenant_id: a.tenant_id,
            operator_id: a.operator_id,
            outcome: outcome_to(a.outcome),
            note: a.note.unwrap_or_default(),
            acked_at_ms: ms(a.acked_at),
        }
    }
}

impl TryFrom<pb::AlertAck> for AlertAck {
    type Error = Violation;

    fn try_from(a: pb::AlertAck) -> Result<Self, Violation> {
        Ok(AlertAck {
            ack_id: a.ack_id,
            alert_id: a.alert_id,
            tenant_id: a.tenant_id,
            operator_id: a.operator_id,
            outcome: outcome_from(a.outcome, "outcome")?,
            note: none_if_empty(a.note),
            acked_at: at(a.acked_at_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::live::LiveMessage;

    #[test]
    fn garbage_bytes_are_malformed() {
        let v = Alert::decode_proto(&[0xff, 0xff, 0xff]).expect_err("garbage");
        assert_eq!(v.code, ViolationCode::Malformed);
        let v = Push::decode_proto(&[0x0a, 0x05, b'a']).expect_err("truncated");
        assert_eq!(v.code, ViolationCode::Malformed);
    }

    #[test]
    fn unspecified_and_unknown_enums_are_violations() {
        let v = Alert::decode_proto(&pb::Alert::default().encode_to_vec()).expect_err("zero");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("category", ViolationCode::Required)
        );
        let msg = pb::Alert {
            category: 1,
            severity: 99,
            ..Default::default()
        };
        let v = Alert::decode_proto(&msg.encode_to_vec()).expect_err("unknown");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("severity", ViolationCode::InvalidValue)
        );
        let msg = pb::Alert {
            category: 1,
            severity: 1,
            recommendation: 1,
            group_by: 1,
            measures: vec![pb::Measure::default()],
            ..Default::default()
        };
        let v = Alert::decode_proto(&msg.encode_to_vec()).expect_err("measure");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("measures[0].comparison", ViolationCode::Required)
        );
        let v = Delivery::decode_proto(&pb::Delivery::default().encode_to_vec()).expect_err("type");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("message_type", ViolationCode::Required)
        );
        let v = AlertAck::decode_proto(
            &pb::AlertAck {
                outcome: 7,
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .expect_err("outcome");
        assert_eq!(
            (v.path.as_str(), v.code),
            ("outcome", ViolationCode::InvalidValue)
        );
    }

    #[test]
    fn a_push_needs_a_target_a_source_and_object_data() {
        let full = pb::Push {
            target: Some(pb::push::Target::RoomId("r".into())),
            source: Some(pb::push::Source::Operator(pb::OperatorSource {
                operator_id: "op".into(),
            })),
            ..Default::default()
        };
        assert!(Push::decode_proto(&full.encode_to_vec()).is_ok());
        let cases = [
            (
                pb::Push {
                    target: None,
                    ..full.clone()
                },
                "target",
                ViolationCode::Required,
            ),
            (
                pb::Push {
                    source: None,
                    ..full.clone()
                },
                "source",
                ViolationCode::Required,
            ),
            (
                pb::Push {
                    data_json: "[1]".into(),
                    ..full.clone()
                },
                "data",
                ViolationCode::InvalidType,
            ),
            (
                pb::Push {
                    data_json: "{".into(),
                    ..full.clone()
                },
                "data",
                ViolationCode::Malformed,
            ),
        ];
        for (msg, path, code) in cases {
            let v = Push::decode_proto(&msg.encode_to_vec()).expect_err(path);
            assert_eq!((v.path.as_str(), v.code), (path, code));
        }
    }
}
