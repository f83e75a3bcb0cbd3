-- Issue 9, top-ups and payments.
-- `processing_since`: when the provider said the payment is on its way (a bank debit, SEPA,
-- ACH): such a top-up waits for the outcome and is never expired for want of payment.
-- `granted_credit_expires_at`: when the credit a succeeded top-up granted expires (NULL while
-- not credited, or when it never expires). It differs from `credit_expires_at` when the
-- requested instant had passed by the time the payment succeeded.
ALTER TABLE top_ups ADD COLUMN processing_since BIGINT;
ALTER TABLE top_ups ADD COLUMN granted_credit_expires_at BIGINT;
