//! Payment providers behind one trait. The built-in `test` provider serves test mode with its
//! own checkout page and test cards; live mode uses a real provider (Stripe) and never the
//! test one.

pub mod checkout;
pub mod stripe;
pub mod test_provider;

use rust_decimal::Decimal;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tally_core::{Environment, Mode};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutRequest {
    pub top_up_id: String,
    pub customer_id: String,
    pub customer_email: Option<String>,
    pub amount: Decimal,
    pub currency: String,
    pub description: String,
    /// Where the provider sends the customer after paying / after giving up.
    pub success_url: String,
    pub cancel_url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The server's "now" when the checkout is asked for (its clock, which tests move).
    pub now: chrono::DateTime<chrono::Utc>,
    /// Keep the card for later off-session charges (auto top-up).
    pub save_payment_method: bool,
    /// The test checkout page's secret, for the test provider's link.
    pub checkout_token: String,
    /// Tally's own public base URL, for pages Tally serves.
    pub public_url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkout {
    /// The provider's id for the checkout (a Stripe Checkout Session id, or the top-up id).
    pub reference: String,
    pub redirect_url: String,
}

/// A hosted page where a customer saves a card without paying (Stripe Checkout in setup mode).
#[derive(Debug, Clone, PartialEq)]
pub struct CardSetupRequest {
    /// Tally's customer, and the mode it lives in: the provider's notification names them.
    pub customer_id: String,
    pub mode: Mode,
    pub customer_email: Option<String>,
    /// The provider's customer the customer's saved cards are kept on, when they have one.
    pub provider_customer: Option<String>,
    /// A fresh id for this attempt: the provider's idempotency key.
    pub setup_id: String,
    /// Where the provider sends the customer after saving the card / after giving up.
    pub success_url: String,
    pub cancel_url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffSessionCharge {
    pub top_up_id: String,
    pub amount: Decimal,
    pub currency: String,
    /// The saved payment method's provider reference and customer.
    pub payment_method: String,
    pub provider_customer: Option<String>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChargeOutcome {
    Succeeded {
        reference: String,
    },
    /// The payment is processing; a notification will settle it.
    Processing {
        reference: String,
    },
    Declined {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("the payment provider refused the request: {0}")]
    Refused(String),
    #[error("the payment provider could not be reached: {0}")]
    Unavailable(String),
}

pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a hosted checkout for a top-up.
    fn start_checkout<'a>(&'a self, request: &'a CheckoutRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>>;
    /// Charges a saved payment method without the customer (auto top-up).
    fn charge_off_session<'a>(
        &'a self,
        request: &'a OffSessionCharge,
    ) -> BoxFuture<'a, Result<ChargeOutcome, PaymentError>>;
    /// Closes a checkout the customer gave up (`reference` from [`Checkout`]), so that it takes
    /// no payment if the provider can stop it. The test provider's page checks the top-up.
    fn cancel_checkout<'a>(&'a self, _reference: &'a str) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }
    /// Starts a hosted page where the customer saves a card without paying. Only Stripe has
    /// one: the test provider's cards are added on the portal's own form.
    fn start_card_setup<'a>(&'a self, _request: &'a CardSetupRequest) -> BoxFuture<'a, Result<Checkout, PaymentError>> {
        Box::pin(async { Err(PaymentError::Refused("this provider saves cards only on the portal's own form".into())) })
    }
    /// Forgets a saved card at the provider, so that it can never be charged.
    fn remove_card<'a>(&'a self, _card: &'a SavedCard) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }
    /// Makes a saved card the customer's default at the provider.
    fn set_default_card<'a>(&'a self, _card: &'a SavedCard) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A saved card as a provider knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedCard {
    /// The provider's payment method (`pm_…`).
    pub payment_method: String,
    /// The provider's customer it is attached to (`cus_…`).
    pub provider_customer: Option<String>,
}

/// The provider for each mode.
#[derive(Clone)]
pub struct Providers {
    pub test: Arc<dyn PaymentProvider>,
    /// `None` until live payments are configured.
    pub live: Option<Arc<dyn PaymentProvider>>,
    /// Stripe, when live mode pays through it: its webhook endpoint needs the signing secret
    /// and the API, which the trait does not expose.
    pub stripe: Option<Arc<stripe::StripeProvider>>,
}

impl Default for Providers {
    fn default() -> Providers {
        Providers { test: Arc::new(test_provider::TestProvider), live: None, stripe: None }
    }
}

impl Providers {
    /// Live mode pays through Stripe. Test mode keeps the test provider: the two never meet.
    pub fn with_stripe(self, stripe: Arc<stripe::StripeProvider>) -> Providers {
        Providers { live: Some(stripe.clone()), stripe: Some(stripe), ..self }
    }

    pub fn for_mode(&self, mode: Mode) -> Option<Arc<dyn PaymentProvider>> {
        match mode.environment() {
            Environment::Test => Some(self.test.clone()),
            Environment::Live => self.live.clone(),
        }
    }
}
