#!/usr/bin/env python3
"""What an index entry costs SQLite when each commit's entries land on many pages (issue 11,
docs/benchmarks.md "Issue 11: what the list indexes cost the writer").

Inserts the same 200,000 entries of an index shaped like `usage_events_by_subject`
(mode, subject, occurred_at, id) into a fresh database three ways: committed every 200 rows
with each 100-row batch spread over 100 subjects (as `tally bench` sends them), committed every
200 rows under one subject, and in one transaction in key order (what a writer that builds the
index behind the hot path, in bulk, would do). Prints the process's CPU per entry for each.
`synchronous=OFF`, so no fsync is counted: only SQLite's own work. Python's own overhead per
row is in every figure alike.

    scripts/sqlite-scatter-cost.py
"""
import os
import sqlite3
import tempfile
import time

ROWS = 200_000
ROWS_PER_COMMIT = 200
SUBJECTS = 100


def entries():
    # Batches of 100 events, the event's index within its batch naming its subject.
    return [(f"user-{n % SUBJECTS}", 1796420146816434 + n, f"661d5a8b553a1-{n // 100}-{n % 100}") for n in range(ROWS)]


def fresh_table(db, name):
    db.execute(
        f"CREATE TABLE {name} (mode TEXT, subject TEXT, occurred_at INTEGER, id TEXT,"
        " PRIMARY KEY (mode, subject, occurred_at, id)) WITHOUT ROWID"
    )


def measure(db, name, rows, rows_per_commit):
    fresh_table(db, name)
    started = time.process_time()
    for start in range(0, len(rows), rows_per_commit):
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO {name} VALUES ('test', ?, ?, ?)", rows[start : start + rows_per_commit])
        db.execute("COMMIT")
    used = time.process_time() - started
    print(f"{name}: {1e6 * used / len(rows):.2f} us of CPU an entry")


def main():
    with tempfile.TemporaryDirectory() as directory:
        db = sqlite3.connect(os.path.join(directory, "scatter.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        rows = entries()
        measure(db, "scattered_small_commits", rows, ROWS_PER_COMMIT)
        measure(db, "one_subject_small_commits", [("user-0", at, id) for (_, at, id) in rows], ROWS_PER_COMMIT)
        measure(db, "sorted_one_commit", sorted(rows), len(rows))
        db.close()


if __name__ == "__main__":
    main()
