-- V001: definitions, saga rows and their event history.

CREATE TABLE saga_definitions (
  name           text        NOT NULL,
  version        int         NOT NULL,
  spec           jsonb       NOT NULL,
  content_hash   text        NOT NULL,
  descriptor_set bytea       NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (name, version),
  UNIQUE (name, content_hash)
);

CREATE TABLE sagas (
  id                 uuid        PRIMARY KEY,
  definition_name    text        NOT NULL,
  definition_version int         NOT NULL,
  status             text        NOT NULL,
  input              jsonb       NOT NULL,
  input_hash         text        NOT NULL,
  idempotency_key    text,
  traceparent        text,
  error              text,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  last_seq           bigint      NOT NULL,
  next_wake_at       timestamptz,
  owner              text,
  lease_expires_at   timestamptz,
  fence              bigint      NOT NULL DEFAULT 1,
  abort_requested    boolean     NOT NULL DEFAULT false,
  abort_reason       text,
  retry_requested    boolean     NOT NULL DEFAULT false,
  UNIQUE (definition_name, idempotency_key),
  CONSTRAINT sagas_status_check
    CHECK (status IN ('RUNNING', 'COMPLETED', 'COMPENSATING', 'COMPENSATED', 'FAILED'))
) WITH (fillfactor = 80);

-- Due work: ClaimDue scans this partial index.
CREATE INDEX sagas_next_wake_at_idx ON sagas (next_wake_at) WHERE next_wake_at IS NOT NULL;
-- ListSagas, newest first, with keyset pagination.
CREATE INDEX sagas_created_idx ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_status_created_idx ON sagas (status, created_at DESC, id DESC);
CREATE INDEX sagas_definition_created_idx ON sagas (definition_name, created_at DESC, id DESC);
-- RenewLeases / ReleaseAll / Reclaim look sagas up by owner.
CREATE INDEX sagas_owner_idx ON sagas (owner) WHERE owner IS NOT NULL;

CREATE TABLE saga_events (
  saga_id     uuid        NOT NULL REFERENCES sagas (id),
  seq         bigint      NOT NULL,
  type        smallint    NOT NULL,
  step        int         NOT NULL,
  attempt     int         NOT NULL,
  detail      jsonb,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (saga_id, seq)
);
