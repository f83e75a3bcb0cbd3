-- Issue 9, background jobs. One row per item of a background job (a customer's due grants, a
-- subscription's renewal, an expiring top-up, an auto top-up) whose work failed: the job's
-- claims pass over it until `retry_at`, so one failing item never blocks the others, and it
-- is tried again with a growing delay. The row goes when the item next succeeds.
CREATE TABLE job_retries (
    job TEXT NOT NULL,
    item TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    retry_at BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (job, item)
);
