-- The lab's state (issue 14, first slice): DUTs added through the API, every DUT's job, the
-- counted reads and last events of the lifetime policies, the DUTs' event history.
-- Times are microseconds since the Unix epoch (BIGINT): the same type on every engine.

-- DUTs added through the API (the lab file's DUTs are not stored: the file is authoritative).
CREATE TABLE duts (
    id TEXT PRIMARY KEY,
    -- The DUT as JSON (citron_core::namespace::Dut).
    spec TEXT NOT NULL,
    added_at BIGINT NOT NULL
);

-- Every DUT's job as it was set; loaded again at start.
CREATE TABLE jobs (
    dut TEXT PRIMARY KEY,
    yaml TEXT,
    origin_name TEXT NOT NULL,
    -- The job file's directory, a file: root, for jobs given with serve --job.
    origin_dir TEXT,
    set_at BIGINT NOT NULL
);

-- Reads counted against access_count since the DUT's last boot or job_start.
CREATE TABLE reads (
    dut TEXT NOT NULL,
    step TEXT NOT NULL,
    space TEXT NOT NULL,
    path TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (dut, step, space, path)
);

-- When each DUT last had each event (boot, job_start, job_end).
CREATE TABLE last_events (
    dut TEXT NOT NULL,
    event TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (dut, event)
);

-- The DUTs' event history, newest last.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dut TEXT NOT NULL,
    event TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX events_by_dut ON events (dut, seq);
