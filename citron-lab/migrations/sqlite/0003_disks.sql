-- Job disks (issue 14): each DUT's NBD disks with their lifetime, so that `expiration` counts
-- from stored times and a restart neither forgets a disk nor gives it a fresh lease.
-- A disk's files (base, overlays) are in the data directory of the gateway serving its owner.
CREATE TABLE disks (
    -- The DUT whose job names the disk, and the disk's name in the job.
    owner TEXT NOT NULL,
    disk TEXT NOT NULL,
    -- The base image its overlays are over (a key of <data>/disks/bases).
    base_key TEXT NOT NULL,
    -- boot, job_start or never.
    reset_on TEXT NOT NULL,
    -- Seconds after last_use that a disk no job holds is removed; NULL: kept.
    expiration BIGINT,
    -- When a job last asked for the disk or released it (microseconds since the Unix epoch).
    last_use BIGINT NOT NULL,
    -- 1 while a job holds the disk (it does not expire), else 0.
    held BIGINT NOT NULL,
    -- The DUTs with an overlay (their writes) on it, a JSON list of DUT ids.
    overlays TEXT NOT NULL,
    PRIMARY KEY (owner, disk)
);
