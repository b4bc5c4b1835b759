//! Mandate and charge statuses, stored as lowercase text (each table checks the values).

use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                s.parse().map_err(|_| format!("unknown {} {s:?}", stringify!($name)).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// `pending` until the checkout settles; `revoked` only by the merchant, from `active`.
    MandateStatus {
        Pending => "pending",
        Active => "active",
        Failed => "failed",
        Expired => "expired",
        Cancelled => "cancelled",
        Revoked => "revoked",
    }
}

text_enum! {
    /// `active` while billing; `past_due` while dunning retries a failed period; `paused`
    /// (by the merchant, or when dunning ran out); `cancelled`; `finished` when the schedule
    /// has no period left.
    SubscriptionStatus {
        Active => "active",
        PastDue => "past_due",
        Paused => "paused",
        Cancelled => "cancelled",
        Finished => "finished",
    }
}

text_enum! {
    /// `pending` until Moment has the session, `processing` until its outcome is known;
    /// `needs_review` when the service can no longer learn or safely retry the outcome (an
    /// operator looks at Moment; a webhook or reconciliation can still settle it).
    ChargeStatus {
        Pending => "pending",
        Processing => "processing",
        Succeeded => "succeeded",
        Failed => "failed",
        NeedsReview => "needs_review",
    }
}
