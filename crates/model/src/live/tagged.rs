//! Reading a one-of in its JSON form, an object with exactly one member named after the case
//! (`{"player": "p-1"}`, `{"operator": {...}}`). Serde's derived reader reports a second member as
//! a syntax error (`malformed`); this one reports it as `invalid_value`, an unknown member as
//! `unknown_field`, and keeps the field path into the case's body.

/// Implements `Deserialize` for an enum of newtype variants, each read from the member named
/// `$key`. `$what` says what it is and what its members are, for error messages.
macro_rules! one_member_enum {
    ($ty:ident, $what:literal, { $($key:ident => $variant:ident),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(serde::Deserialize)]
                #[serde(field_identifier)]
                #[allow(non_camel_case_types)]
                enum Key {
                    $($key),+
                }

                struct OneMember;

                impl<'de> serde::de::Visitor<'de> for OneMember {
                    type Value = $ty;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!($what, " (an object with exactly one member)"))
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$ty, A::Error> {
                        let value = match map.next_key::<Key>()? {
                            $(Some(Key::$key) => $ty::$variant(map.next_value()?),)+
                            None => {
                                return Err(serde::de::Error::custom(concat!(
                                    $what,
                                    " needs one member, found none"
                                )));
                            }
                        };
                        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                            return Err(serde::de::Error::custom(concat!(
                                $what,
                                " has exactly one member, found more"
                            )));
                        }
                        Ok(value)
                    }
                }

                d.deserialize_map(OneMember)
            }
        }
    };
}

pub(crate) use one_member_enum;
