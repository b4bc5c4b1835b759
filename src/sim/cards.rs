//! The simulator's test cards. These conventions are ours, not Moment's: Moment documents only
//! `4242 4242 4242 4242` (any future expiry, any CVC) as a successful card.

use serde::Serialize;
use serde_json::{Value, json};

/// What a card does at checkout and on later `next_in_series` charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Pays at checkout and on every later charge.
    Succeeds,
    /// Refused at checkout: the attempt fails and the session stays `active`.
    Declines(Decline),
    /// Pays at checkout (the mandate is set up), then every later charge is declined.
    DeclinesLaterCharges,
    /// Pays at checkout; later charges are declined for `insufficient_funds` until
    /// `POST /_sim/payment_methods/{id}/fund`, then paid.
    LaterInsufficientFunds,
    /// Pays at checkout; every later charge is declined as a lost card (`lost_card`).
    LaterLost,
}

/// A refusal, as Moment reports it in `last_payment_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decline {
    pub error_code: &'static str,
    pub decline_code: Option<&'static str>,
    pub message: &'static str,
}

impl Decline {
    /// `last_payment_error` at `timestamp`.
    pub fn to_json(self, timestamp: &str) -> Value {
        json!({
            "error_code": self.error_code,
            "decline_code": self.decline_code,
            "message": self.message,
            "timestamp": timestamp,
        })
    }
}

/// Later charges of a `LaterInsufficientFunds` card before it is funded.
pub const LATER_INSUFFICIENT_FUNDS: Decline = Decline {
    error_code: "card_declined",
    decline_code: Some("insufficient_funds"),
    message: "The card was declined due to insufficient funds.",
};

/// Later charges of a `LaterLost` card.
pub const LATER_LOST: Decline = Decline {
    error_code: "card_declined",
    decline_code: Some("lost_card"),
    message: "The card was reported lost.",
};

/// The decline every later charge of a `DeclinesLaterCharges` card gets.
pub const LATER_CHARGE_DECLINE: Decline = Decline {
    error_code: "card_declined",
    decline_code: Some("generic_decline"),
    message: "The card was declined.",
};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TestCard {
    pub number: &'static str,
    pub description: &'static str,
    pub behaviour: Behaviour,
}

/// Every card the checkout accepts. Any future expiry and any 3- or 4-digit CVC.
pub const TEST_CARDS: &[TestCard] = &[
    TestCard {
        number: "4242424242424242",
        description: "Succeeds, at checkout and on every later charge",
        behaviour: Behaviour::Succeeds,
    },
    TestCard {
        number: "4000000000000002",
        description: "Declined at checkout: card_declined / generic_decline",
        behaviour: Behaviour::Declines(Decline {
            error_code: "card_declined",
            decline_code: Some("generic_decline"),
            message: "The card was declined.",
        }),
    },
    TestCard {
        number: "4000000000009995",
        description: "Declined at checkout: card_declined / insufficient_funds",
        behaviour: Behaviour::Declines(Decline {
            error_code: "card_declined",
            decline_code: Some("insufficient_funds"),
            message: "The card was declined due to insufficient funds.",
        }),
    },
    TestCard {
        number: "4000000000003220",
        description: "3-D Secure fails at checkout: authentication_failed",
        behaviour: Behaviour::Declines(Decline {
            error_code: "authentication_failed",
            decline_code: None,
            message: "3-D Secure authentication failed.",
        }),
    },
    TestCard {
        number: "4000000000000341",
        description: "Succeeds at checkout; every later next_in_series charge is declined",
        behaviour: Behaviour::DeclinesLaterCharges,
    },
    TestCard {
        number: "4000000000009953",
        description: "Succeeds at checkout; later charges are declined insufficient_funds until POST /_sim/payment_methods/{id}/fund",
        behaviour: Behaviour::LaterInsufficientFunds,
    },
    TestCard {
        number: "4000000000009987",
        description: "Succeeds at checkout; every later charge is declined as lost_card",
        behaviour: Behaviour::LaterLost,
    },
];

/// The card with this number (spaces and dashes ignored).
pub fn find(number: &str) -> Option<&'static TestCard> {
    let digits: String = number.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    TEST_CARDS.iter().find(|c| c.number == digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_found_with_or_without_spaces_and_pass_luhn() {
        assert_eq!(
            find("4242 4242 4242 4242").unwrap().behaviour,
            Behaviour::Succeeds
        );
        assert!(find("4242-4242-4242-4241").is_none());
        for card in TEST_CARDS {
            let sum: u32 = card
                .number
                .chars()
                .rev()
                .enumerate()
                .map(|(i, c)| {
                    let d = c.to_digit(10).unwrap();
                    if i % 2 == 1 {
                        let d2 = d * 2;
                        if d2 > 9 { d2 - 9 } else { d2 }
                    } else {
                        d
                    }
                })
                .sum();
            assert_eq!(sum % 10, 0, "{} fails the Luhn check", card.number);
        }
    }
}
