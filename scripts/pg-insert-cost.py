#!/usr/bin/env python3
"""What one usage event's row costs PostgreSQL (issue 11, docs/benchmarks.md "Issue 11: where
PostgreSQL's CPU per event goes").

Copies the shape of `usage_events` (columns and every index) into a probe table of a migrated
Tally database, inserts 64-row batches into it the way the server does (a prepared multi-row
`INSERT ... VALUES`) and the way `UNNEST` arrays would, one commit per batch, and prints the
CPU its backend used per row (from /proc, so PostgreSQL must run on this machine). The probe
table is dropped at the end; nothing else is touched.

    pip install "psycopg[binary]"
    scripts/pg-insert-cost.py "host=127.0.0.1 user=postgres dbname=tally_bench"

PROBE_SUBJECTS=100 gives a batch's rows 100 subjects (`user-0` ... `user-99`, as `tally bench`
sends them) instead of one, to see what scattering a batch over the subject index costs.
"""
import os
import sys
import time
import uuid

import psycopg

COLUMNS = (
    "mode, id, customer_id, event_type, occurred_at, subject, description, data, costs, has_fees, "
    "total_fees, fee_currency, created_at, content_hash"
)
TYPES = ["text", "text", "text", "text", "int8", "text", "text", "text", "text", "int8", "text", "text", "int8", "text"]
ROWS_PER_BATCH = 64
BATCHES = 200
SUBJECTS = int(os.environ.get("PROBE_SUBJECTS", "1"))
PROBE = "insert_cost_probe"


def batch(number):
    rows = []
    for line in range(ROWS_PER_BATCH):
        at = 1795678968102030 + number * 1000 + line
        rows.append(("test", uuid.uuid4().hex, "cust_%032x" % (line % 100), "image_generated", at, "user-%d" % (line % SUBJECTS), None,
                     "{}", "[]", 1, "1", "IMG", at + 1, uuid.uuid4().hex * 2))
    return rows


def backend_cpu_seconds(connection):
    fields = open(f"/proc/{connection.info.backend_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(dsn, kind):
    values = ", ".join("(" + ", ".join(["%s"] * len(TYPES)) + ")" for _ in range(ROWS_PER_BATCH))
    statements = {
        "values": f"INSERT INTO {PROBE} ({COLUMNS}) VALUES {values}",
        "unnest": f"INSERT INTO {PROBE} ({COLUMNS}) SELECT * FROM UNNEST("
        + ", ".join(f"%s::{kind_of}[]" for kind_of in TYPES) + ")",
    }
    with psycopg.connect(dsn, prepare_threshold=0) as connection:
        connection.execute(f"TRUNCATE {PROBE}")
        connection.commit()
        before, started = backend_cpu_seconds(connection), time.time()
        for number in range(BATCHES):
            rows = batch(number)
            arguments = [value for row in rows for value in row] if kind == "values" else [list(c) for c in zip(*rows)]
            connection.execute(statements[kind], arguments)
            connection.commit()
        used = backend_cpu_seconds(connection) - before
        rows = BATCHES * ROWS_PER_BATCH
        print(f"{kind}: {rows} rows, backend CPU {1e6 * used / rows:.1f} us a row, {time.time() - started:.2f} s wall")


def main():
    dsn = sys.argv[1] if len(sys.argv) > 1 else "host=127.0.0.1 user=postgres dbname=tally_bench"
    with psycopg.connect(dsn) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {PROBE}")
        connection.execute(f"CREATE TABLE {PROBE} (LIKE usage_events INCLUDING ALL)")
        connection.commit()
    try:
        for _ in range(2):
            run(dsn, "values")
            run(dsn, "unnest")
    finally:
        with psycopg.connect(dsn) as connection:
            connection.execute(f"DROP TABLE IF EXISTS {PROBE}")
            connection.commit()


if __name__ == "__main__":
    main()
