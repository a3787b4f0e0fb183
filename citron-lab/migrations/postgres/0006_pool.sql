-- Issue 16: the DUT pool. Times are microseconds since the Unix epoch (BIGINT), as in 0001.

-- Every DUT the pool may give, with what a request matches on (kind, arch, model, tags as JSON),
-- copied from the lab file at start; its pool state: free, allocated, recycling (being powered
-- off and reset after a reservation, by its own gateway), kept (failed and kept for debugging),
-- quarantined (a power command failed or hung) or disabled (by hand).
CREATE TABLE pool_duts (
    id TEXT PRIMARY KEY,
    gateway TEXT,
    attrs TEXT NOT NULL,
    state TEXT NOT NULL,
    reservation BIGINT,
    uses BIGINT NOT NULL,
    last_used BIGINT NOT NULL,
    reason TEXT,
    output TEXT,
    changed_at BIGINT NOT NULL
);
CREATE INDEX pool_duts_by_state ON pool_duts (state);

-- Reservations: waiting in the queue (priority, then age), allocated, then released, expired or
-- failed. tenant is '' for the lab's own (the administrator's).
CREATE TABLE reservations (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The request as JSON (tags, kind, arch, model, count, job).
    request TEXT NOT NULL,
    priority BIGINT NOT NULL,
    lifetime_secs BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    allocated_at BIGINT,
    expires_at BIGINT,
    ended_at BIGINT,
    -- Failed and kept: the DUTs stay aside until then.
    keep_until BIGINT,
    -- The allocated DUTs as JSON, and the model they are (the tenant's affinity).
    duts TEXT,
    model TEXT,
    -- The id of the dut-scope token of the holder, revoked when it ends.
    token TEXT,
    token_id TEXT,
    reason TEXT
);
CREATE INDEX reservations_queue ON reservations (state, priority, created_at);
CREATE INDEX reservations_by_tenant ON reservations (tenant, id);

-- One row every allocation pass updates first: its row lock makes the passes of several
-- gateways on one PostgreSQL take turns, so no DUT is given twice.
CREATE TABLE pool_lock (
    id BIGINT PRIMARY KEY,
    passes BIGINT NOT NULL
);
INSERT INTO pool_lock (id, passes) VALUES (1, 0);
