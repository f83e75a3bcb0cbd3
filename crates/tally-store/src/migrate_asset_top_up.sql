-- A Tally extension to the asset: what the billing portal's top-up form offers for it, as
-- JSON written and read by the HTTP layer (preset amounts and the minimum, per currency).
-- NULL: no presets and no minimum.
ALTER TABLE assets ADD COLUMN top_up TEXT;
