-- flow-archiver state, version 1 (docs/scaling.md, "What the tables hold").

-- One row per flow ever seen: its open part, or the number its next part opens with.
CREATE TABLE flows (
    tenant        text    NOT NULL,
    flow_id       text    NOT NULL,
    -- The open part when meta is set; otherwise the part the next event opens.
    part          integer NOT NULL,
    -- postcard-encoded FlowMeta of the open part; NULL while no part is open.
    meta          bytea,
    -- When the open part is due; NULL without a timer (and while no part is open).
    deadline_ms   bigint,
    -- Until when an instance's due_flows claim keeps others from sealing it.
    claimed_until timestamptz,
    PRIMARY KEY (tenant, flow_id)
);
CREATE INDEX flows_due ON flows (deadline_ms) WHERE deadline_ms IS NOT NULL;

-- Event bytes of open and sealed parts, in flow order by ord (sequence, then arrival).
CREATE TABLE events (
    tenant  text    NOT NULL,
    flow_id text    NOT NULL,
    part    integer NOT NULL,
    ord     bytea   NOT NULL,
    raw     bytea   NOT NULL,
    PRIMARY KEY (tenant, flow_id, part, ord)
);

-- Every dedupe key a flow has stored, archived parts included: a redelivery is a
-- conflict on this key, whichever instance receives it. The key is 32 bytes: the
-- 16-byte SHA-256 digest of (tenant, flow_id), then that of (source, id), so a
-- flow's keys are one range of the index (erasure deletes it) and the index stays
-- small whatever the ids look like.
CREATE TABLE dedupe (
    key bytea PRIMARY KEY
);

-- Archivals in progress. owner and fence say who may act on one; lease_until is
-- renewed by its owner, and an expired one is taken over with fence + 1.
CREATE TABLE intents (
    id          text        PRIMARY KEY,
    body        bytea       NOT NULL,
    verified    bytea,
    owner       text        NOT NULL,
    fence       bigint      NOT NULL,
    lease_until timestamptz NOT NULL
);

CREATE TABLE purge_intents (
    object_key  text        PRIMARY KEY,
    body        bytea       NOT NULL,
    owner       text        NOT NULL,
    fence       bigint      NOT NULL,
    lease_until timestamptz NOT NULL
);

CREATE TABLE erase_intents (
    old_key     text        PRIMARY KEY,
    body        bytea       NOT NULL,
    owner       text        NOT NULL,
    fence       bigint      NOT NULL,
    lease_until timestamptz NOT NULL
);

CREATE TABLE holds (
    tenant  text  NOT NULL,
    flow_id text  NOT NULL,
    body    bytea NOT NULL,
    PRIMARY KEY (tenant, flow_id)
);

CREATE TABLE checkpoints (
    source   text  PRIMARY KEY,
    position bytea NOT NULL
);

CREATE TABLE settings (
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);
