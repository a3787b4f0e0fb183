-- Several gateways on one state (issue 14 §3) and one event feed (§6).

-- The event history becomes the lab's feed: every change and notable happening, with a durable
-- increasing `seq` (what SSE clients resume from with Last-Event-ID). `event` is its type
-- (boot, job_start, job_end, dut_added, dut_removed, dut_offline, job_set, job_dropped, ...).
-- `dut` is empty for an event of the lab or a gateway. Rows are never rewritten.
ALTER TABLE events ADD COLUMN job TEXT;
-- Who did it: `api` (+ the token's name), `lab-file`, `serve --job`, a gateway.
ALTER TABLE events ADD COLUMN actor TEXT;
-- The gateway that wrote it.
ALTER TABLE events ADD COLUMN gateway TEXT;
-- A JSON object with what else the event says (an error, an address).
ALTER TABLE events ADD COLUMN detail TEXT;
CREATE INDEX events_by_type ON events (event, seq);

-- The gateways of the lab and their heartbeats (microseconds since the Unix epoch).
CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    -- Set when another gateway found this one silent for longer than heartbeat_timeout;
    -- cleared by its next heartbeat.
    offline_since BIGINT
);

-- Every DUT of the lab and the gateway that serves it: the lab file's (`source` lab-file, as
-- last claimed by their gateway at its start) and the API's (`api`). One row per id: a DUT
-- is claimed by one gateway.
CREATE TABLE lab_duts (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    -- The DUT as JSON (citron_core::namespace::Dut).
    spec TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX lab_duts_by_gateway ON lab_duts (gateway);

-- API requests about a DUT that another gateway serves: written by the gateway that received
-- the request, carried out by the DUT's gateway (told by NOTIFY), answered here.
CREATE TABLE forwarded (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL,
    dut TEXT NOT NULL,
    method TEXT NOT NULL,
    uri TEXT NOT NULL,
    content_type TEXT,
    body TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The HTTP status and body of the answer, once carried out.
    status INTEGER,
    answer TEXT,
    done_at BIGINT
);
CREATE INDEX forwarded_pending ON forwarded (gateway, status);
