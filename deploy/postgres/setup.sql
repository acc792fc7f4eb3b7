-- setup.sql -- ferry's own tables in the application database
--
-- `ferry serve` creates these itself at start when they are missing (and when its role may);
-- run this file as an owner of the database when ferry's role may not create tables:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/setup.sql
-- Keep in step with SETUP_SQL in gateway/gw_write.c.

-- write-back idempotency: the highest op id applied (or answered) per user and client
CREATE TABLE IF NOT EXISTS ferry_write_log (
  user_id text NOT NULL,
  client_id text NOT NULL,
  last_op_id bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, client_id)
);

-- constraint violations found by write-back (the write is applied and flagged, not rejected);
-- an ordinary table, so sync rules can send each user their own violations
CREATE TABLE IF NOT EXISTS ferry_violations (
  id text PRIMARY KEY DEFAULT gen_random_uuid()::text,
  constraint_name text NOT NULL,
  table_name text NOT NULL,
  row_id text NOT NULL,
  user_id text NOT NULL,
  conflicting_ids jsonb NOT NULL DEFAULT '[]',
  message text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ferry_violations_user_id ON ferry_violations (user_id);
