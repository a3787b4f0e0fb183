-- The DUTs' access logs (bounded: citron keeps the newest records of each DUT). `seq` is given
-- by citron, one sequence over every DUT, increasing, never reused (across restarts too).
CREATE TABLE accesses (
    seq BIGINT PRIMARY KEY,
    dut TEXT NOT NULL,
    -- Seconds since the Unix epoch, fractional.
    time DOUBLE PRECISION NOT NULL,
    protocol TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    -- served, aborted or refused
    outcome TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX accesses_by_dut ON accesses (dut, seq);
