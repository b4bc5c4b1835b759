//! Standard Webhooks signature verification (and signing, for the tests and tools).
//!
//! Moment signs `"{webhook-id}.{webhook-timestamp}.{raw body}"` with HMAC-SHA256, keyed by the
//! base64-decoded part of a `whsec_…` secret, and sends `v1,<base64>` entries separated by
//! spaces in `webhook-signature`. Several entries and several of our secrets may be in play
//! during a rotation: any pair that matches accepts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused. The HTTP answer is the same for every variant of one class;
/// the variant is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but not of the expected form.
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    /// The timestamp is further from now than the tolerance, in either direction.
    #[error("timestamp outside the tolerance")]
    Timestamp,
    /// No `v1` entry matches any configured secret.
    #[error("no matching signature")]
    Mismatch,
}

impl SignatureError {
    /// True when the request was malformed (400) rather than unauthenticated (401).
    pub fn is_malformed(self) -> bool {
        matches!(self, Self::MissingHeader(_) | Self::MalformedHeader(_))
    }
}

/// A signing secret that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("webhook secret must be `whsec_` followed by non-empty base64")]
pub struct InvalidSecret;

/// One signing key, decoded from its `whsec_…` form.
pub struct WebhookSecret(SecretSlice<u8>);

impl WebhookSecret {
    /// Decodes `whsec_<base64>`; the prefix is optional, as in the reference libraries.
    pub fn parse(secret: &str) -> Result<Self, InvalidSecret> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64.decode(b64).map_err(|_| InvalidSecret)?;
        if key.is_empty() {
            return Err(InvalidSecret);
        }
        Ok(Self(key.into()))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(self.0.expose_secret()).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature entry for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// The three Standard Webhooks headers, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks deliveries against every configured secret.
pub struct Verifier {
    secrets: Vec<WebhookSecret>,
    tolerance: Duration,
}

/// Longest `webhook-id` accepted; ids are short tokens, this only bounds what we store.
const MAX_ID_LEN: usize = 255;

/// The most `webhook-signature` entries looked at: a key rotation needs two or three.
pub const MAX_SIGNATURE_ENTRIES: usize = 16;

/// The longest `webhook-signature` header accepted, in bytes: 16 entries of `v1,` and 44
/// characters of base64, with room to spare.
pub const MAX_SIGNATURE_LEN: usize = 2048;

impl Verifier {
    pub fn new(secrets: Vec<WebhookSecret>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// Verifies a delivery at time `now` and returns its `webhook-id`.
    pub fn verify<'a>(
        &self,
        headers: SignedHeaders<'a>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<&'a str, SignatureError> {
        let id = headers
            .id
            .ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let timestamp = headers
            .timestamp
            .ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let signature = headers
            .signature
            .ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(|c| c.is_control()) {
            return Err(SignatureError::MalformedHeader("webhook-id"));
        }
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::MalformedHeader("webhook-timestamp"))?;
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => return Err(SignatureError::Timestamp),
        };
        if now.abs_diff(ts) > self.tolerance.as_secs() {
            return Err(SignatureError::Timestamp);
        }
        if signature.len() > MAX_SIGNATURE_LEN {
            return Err(SignatureError::MalformedHeader("webhook-signature"));
        }
        let entries: Vec<&str> = signature.split(' ').filter(|e| !e.is_empty()).collect();
        if entries.len() > MAX_SIGNATURE_ENTRIES {
            return Err(SignatureError::MalformedHeader("webhook-signature"));
        }
        // One HMAC per secret, whatever the number of entries: each candidate is then only
        // compared with the expected tags (constant time, length checked).
        let expected: Vec<[u8; 32]> = self
            .secrets
            .iter()
            .map(|secret| {
                secret
                    .mac(id, timestamp, body)
                    .finalize()
                    .into_bytes()
                    .into()
            })
            .collect();
        let mut matched = subtle::Choice::from(0);
        for candidate in entries
            .iter()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
        {
            for tag in &expected {
                // `ct_eq` on slices of different lengths is false, without comparing bytes.
                matched |= tag[..].ct_eq(&candidate[..]);
            }
        }
        if bool::from(matched) {
            return Ok(id);
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors and cases, from `../shared/standard-webhooks-vectors.json`.
    const VECTORS: &str = include_str!("../../tests/api/fixtures/standard-webhooks-vectors.json");

    struct Vector {
        secret: String,
        msg_id: String,
        timestamp: i64,
        payload: String,
        signature: String,
    }

    fn vectors() -> (serde_json::Value, impl Fn(&str) -> Vector) {
        let doc: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        let all = doc["vectors"].as_array().unwrap().clone();
        let lookup = move |name: &str| {
            let v = all.iter().find(|v| v["name"] == name).unwrap();
            Vector {
                secret: v["secret"].as_str().unwrap().to_owned(),
                msg_id: v["msg_id"].as_str().unwrap().to_owned(),
                timestamp: v["timestamp"].as_i64().unwrap(),
                payload: v["payload"].as_str().unwrap().to_owned(),
                signature: v["expected_signature"].as_str().unwrap().to_owned(),
            }
        };
        (doc, lookup)
    }

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(
            vec![WebhookSecret::parse(secret).unwrap()],
            Duration::from_secs(180),
        )
    }

    fn check(
        v: &Verifier,
        vec: &Vector,
        ts: &str,
        sig: &str,
        now: i64,
    ) -> Result<(), SignatureError> {
        let headers = SignedHeaders {
            id: Some(&vec.msg_id),
            timestamp: Some(ts),
            signature: Some(sig),
        };
        v.verify(headers, vec.payload.as_bytes(), at(now))
            .map(|_| ())
    }

    #[test]
    fn the_published_vectors_sign_and_verify() {
        let (_, vector) = vectors();
        for name in ["A", "B"] {
            let v = vector(name);
            let secret = WebhookSecret::parse(&v.secret).unwrap();
            assert_eq!(
                secret.sign(&v.msg_id, v.timestamp, v.payload.as_bytes()),
                v.signature,
                "vector {name}"
            );
            let ts = v.timestamp.to_string();
            assert_eq!(
                check(&verifier(&v.secret), &v, &ts, &v.signature, v.timestamp),
                Ok(())
            );
        }
    }

    #[test]
    fn every_published_case_gives_the_expected_answer() {
        let (doc, vector) = vectors();
        for case in doc["cases"].as_array().unwrap() {
            let name = case["case"].as_str().unwrap();
            let expect = case["expect"].as_str().unwrap();
            if expect == "configuration error" {
                let secret = case["secret"].as_str().unwrap();
                assert!(WebhookSecret::parse(secret).is_err(), "{name}");
                assert!(
                    WebhookSecret::parse(&format!("whsec_{secret}")).is_err(),
                    "{name}"
                );
                continue;
            }
            let v = vector(case["vector"].as_str().unwrap_or("A"));
            let secret = case["secret"].as_str().unwrap_or(&v.secret);
            let verifier = verifier(secret);
            let sig = case["signature"].as_str().unwrap_or(&v.signature);
            let tolerance = 180;
            let results: Vec<Result<(), SignatureError>> = match name {
                "timestamp header not an integer" => {
                    vec![check(
                        &verifier,
                        &v,
                        case["timestamp"].as_str().unwrap(),
                        sig,
                        v.timestamp,
                    )]
                }
                // The message was signed `tolerance + 1` seconds before now.
                "timestamp older than the tolerance by 1 s" => {
                    vec![check(
                        &verifier,
                        &v,
                        &v.timestamp.to_string(),
                        sig,
                        v.timestamp + tolerance + 1,
                    )]
                }
                // The message claims a time `tolerance + 1` seconds after now.
                "timestamp newer than the tolerance by 1 s" => {
                    vec![check(
                        &verifier,
                        &v,
                        &v.timestamp.to_string(),
                        sig,
                        v.timestamp - tolerance - 1,
                    )]
                }
                "any of the three headers missing" => {
                    let ts = v.timestamp.to_string();
                    let full = SignedHeaders {
                        id: Some(&v.msg_id),
                        timestamp: Some(&ts),
                        signature: Some(sig),
                    };
                    [
                        SignedHeaders { id: None, ..full },
                        SignedHeaders {
                            timestamp: None,
                            ..full
                        },
                        SignedHeaders {
                            signature: None,
                            ..full
                        },
                    ]
                    .into_iter()
                    .map(|h| {
                        verifier
                            .verify(h, v.payload.as_bytes(), at(v.timestamp))
                            .map(|_| ())
                    })
                    .collect()
                }
                _ => vec![check(
                    &verifier,
                    &v,
                    &v.timestamp.to_string(),
                    sig,
                    v.timestamp,
                )],
            };
            for result in results {
                match expect {
                    "accept" => assert_eq!(result, Ok(()), "{name}"),
                    "reject" => assert!(result.is_err(), "{name}: accepted"),
                    other => panic!("unknown expectation {other}"),
                }
            }
        }
    }

    #[test]
    fn the_tolerance_edges_are_inclusive() {
        let (_, vector) = vectors();
        let v = vector("A");
        let verifier = verifier(&v.secret);
        let ts = v.timestamp.to_string();
        assert_eq!(
            check(&verifier, &v, &ts, &v.signature, v.timestamp + 180),
            Ok(())
        );
        assert_eq!(
            check(&verifier, &v, &ts, &v.signature, v.timestamp - 180),
            Ok(())
        );
        assert_eq!(
            check(&verifier, &v, &ts, &v.signature, v.timestamp + 181),
            Err(SignatureError::Timestamp)
        );
        assert_eq!(
            check(&verifier, &v, &ts, &v.signature, v.timestamp - 181),
            Err(SignatureError::Timestamp)
        );
    }

    #[test]
    fn any_configured_secret_may_match_during_a_rotation() {
        let (_, vector) = vectors();
        let v = vector("B");
        let old = WebhookSecret::parse(&vector("A").secret).unwrap();
        let new = WebhookSecret::parse(&v.secret).unwrap();
        let verifier = Verifier::new(vec![old, new], Duration::from_secs(180));
        assert_eq!(
            check(
                &verifier,
                &v,
                &v.timestamp.to_string(),
                &v.signature,
                v.timestamp
            ),
            Ok(())
        );
    }

    #[test]
    fn a_truncated_signature_is_refused() {
        let (_, vector) = vectors();
        let v = vector("A");
        let verifier = verifier(&v.secret);
        let full = BASE64
            .decode(v.signature.strip_prefix("v1,").unwrap())
            .unwrap();
        let short = format!("v1,{}", BASE64.encode(&full[..16]));
        let empty_tag = format!("v1,{}", BASE64.encode([0u8; 0]));
        let ts = v.timestamp.to_string();
        assert_eq!(
            check(&verifier, &v, &ts, &short, v.timestamp),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&verifier, &v, &ts, &empty_tag, v.timestamp),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart_from_bad_signatures() {
        assert!(SignatureError::MissingHeader("webhook-id").is_malformed());
        assert!(SignatureError::MalformedHeader("webhook-timestamp").is_malformed());
        assert!(!SignatureError::Mismatch.is_malformed());
        assert!(!SignatureError::Timestamp.is_malformed());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn secret() -> WebhookSecret {
        WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
    }

    fn verify(id: &str, ts: &str, sig: &str, body: &[u8]) -> Result<String, SignatureError> {
        let verifier = Verifier::new(vec![secret()], Duration::from_secs(180));
        let headers = SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        };
        verifier
            .verify(headers, body, UNIX_EPOCH + Duration::from_secs(NOW))
            .map(str::to_owned)
    }

    proptest! {
        #[test]
        fn what_is_signed_within_the_tolerance_verifies(
            id in "[a-zA-Z0-9_]{1,64}",
            body in vec(any::<u8>(), 0..2048),
            skew in -180i64..=180,
        ) {
            let ts = NOW as i64 + skew;
            let sig = secret().sign(&id, ts, &body);
            prop_assert_eq!(verify(&id, &ts.to_string(), &sig, &body), Ok(id.clone()));
        }

        #[test]
        fn any_flipped_bit_in_the_body_is_refused(
            body in vec(any::<u8>(), 1..512),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let ts = NOW as i64;
            let sig = secret().sign("msg_1", ts, &body);
            let mut forged = body.clone();
            forged[at.index(body.len())] ^= 1 << bit;
            prop_assert_eq!(
                verify("msg_1", &ts.to_string(), &sig, &forged),
                Err(SignatureError::Mismatch)
            );
        }

        #[test]
        fn a_timestamp_outside_the_tolerance_is_refused(
            skew in prop_oneof![-100_000i64..-180, 181i64..100_000],
            body in vec(any::<u8>(), 0..64),
        ) {
            let ts = NOW as i64 + skew;
            let sig = secret().sign("msg_1", ts, &body);
            prop_assert_eq!(
                verify("msg_1", &ts.to_string(), &sig, &body),
                Err(SignatureError::Timestamp)
            );
        }

        #[test]
        fn arbitrary_headers_never_panic_and_never_verify(
            id in ".{0,300}",
            ts in prop_oneof![".{0,24}", (NOW - 100..NOW + 100).prop_map(|t| t.to_string())],
            sig in prop_oneof![".{0,300}", "(v1,[A-Za-z0-9+/=]{0,60} ?){0,4}"],
            body in vec(any::<u8>(), 0..256),
        ) {
            prop_assert!(verify(&id, &ts, &sig, &body).is_err());
        }
    }
}
