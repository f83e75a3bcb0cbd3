//! The `test` payment provider: no money moves. Its checkout page is served by Tally itself
//! (`/checkout/{top_up_id}`) and takes test cards:
//!
//! | card | outcome |
//! |---|---|
//! | 4242 4242 4242 4242 | succeeds |
//! | 4000 0000 0000 0002 | declined |
//!
//! Off-session charges of a saved test card succeed or decline the same way.

use super::{BoxFuture, ChargeOutcome, Checkout, CheckoutRequest, OffSessionCharge, PaymentError, PaymentProvider};

pub const SUCCEEDING_CARD: &str = "4242424242424242";
pub const DECLINED_CARD: &str = "4000000000000002";

pub struct TestProvider;

/// When every saved test card expires: a fixed date, as test cards take any future one.
pub const TEST_CARD_EXPIRY: tally_store::repo::topups::CardExpiry =
    tally_store::repo::topups::CardExpiry { month: 12, year: 2034 };

/// The card a test checkout saves for `number` (a succeeding test card).
pub fn saved_card(number: &str) -> tally_store::ops::topups::NewPaymentMethod {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    tally_store::ops::topups::NewPaymentMethod {
        provider_reference: format!("pm_test_card_{digits}"),
        provider_customer: None,
        brand: Some("visa".into()),
        last4: Some(digits[digits.len().saturating_sub(4)..].to_owned()),
        expiry: Some(TEST_CARD_EXPIRY),
    }
}

/// What a test card does, or `None` for a number that is no test card.
pub fn card_outcome(number: &str) -> Option<Result<(), String>> {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    match digits.as_str() {
        SUCCEEDING_CARD => Some(Ok(())),
        DECLINED_CARD => Some(Err("Your card was declined.".to_owned())),
        _ => None,
    }
}

impl PaymentProvider for TestProvider {
    fn name(&self) -> &'static str {
        "test"
    }

    fn start_checkout<'a>(&'a self, request: &'a CheckoutRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async move {
            Ok(Checkout {
                reference: request.top_up_id.clone(),
                redirect_url: format!(
                    "{}/checkout/{}?token={}",
                    request.public_url, request.top_up_id, request.checkout_token
                ),
            })
        })
    }

    fn charge_off_session<'a>(
        &'a self,
        request: &'a OffSessionCharge,
    ) -> BoxFuture<'a, Result<ChargeOutcome, PaymentError>> {
        Box::pin(async move {
            let card = request.payment_method.trim_start_matches("pm_test_card_");
            Ok(match card_outcome(card) {
                Some(Ok(())) => ChargeOutcome::Succeeded { reference: format!("pi_test_{}", request.top_up_id) },
                Some(Err(reason)) => ChargeOutcome::Declined { reason },
                None => ChargeOutcome::Declined { reason: "unknown test payment method".into() },
            })
        })
    }
}
