-- setup.sql -- prepare an application database for ferry: publication, role, grants, ferry's tables
--
-- Run once per database, as a superuser (a publication FOR ALL TABLES needs one), on the database
-- ferry replicates; running it again changes nothing:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v ferry_password="$FERRY_DB_PASSWORD" \
--        -f deploy/postgres/setup.sql
-- Without -v ferry_password the role gets no password (for certificate or peer authentication).
-- The server also needs wal_level = logical (postgresql.conf; a restart), and enough
-- max_replication_slots and max_wal_senders (one slot per ferry, two while rules change).
-- ferry's role is "ferry"; its connection string then is postgres.uri in ferry.yaml, e.g.
--   postgresql://ferry:PASSWORD@db.internal:5432/app?sslmode=verify-full
-- Keep the ferry_* tables in step with SETUP_SQL in gateway/api/gw_write_stmt.c.

-- the role: may log in and start logical replication, nothing more
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ferry') THEN
    CREATE ROLE ferry LOGIN REPLICATION;
  ELSE
    ALTER ROLE ferry LOGIN REPLICATION;
  END IF;
END $$;
\if :{?ferry_password}
ALTER ROLE ferry PASSWORD :'ferry_password';
\endif

-- the publication ferry reads (replication.publication, default "ferry"): every table, so tables
-- added later are replicated without another step. To publish fewer, list them instead:
--   CREATE PUBLICATION ferry FOR TABLE lists, todos, ferry_violations;
-- (then every table the sync rules read must be in it; ferry says which one is missing).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'ferry') THEN
    CREATE PUBLICATION ferry FOR ALL TABLES;
  END IF;
END $$;

-- ferry's own tables. ferry creates them at start when its role may; created here, they are
-- handed to the ferry role below (ferry re-runs CREATE ... IF NOT EXISTS for them at every start,
-- which Postgres only allows the tables' owner).

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
-- a violation is resolved when a re-check finds the constraint satisfied, expired after its
-- constraint's expire_after (both added here for databases set up by an earlier release)
ALTER TABLE ferry_violations ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
  ADD COLUMN IF NOT EXISTS expired_at timestamptz;
-- the writer's token claims and client parameters, kept only for a constraint that reads them
-- (request.jwt(), request.parameters()), so a re-check sees what the write saw; publish named
-- columns of this table, not this one
ALTER TABLE ferry_violations ADD COLUMN IF NOT EXISTS request jsonb;
CREATE INDEX IF NOT EXISTS ferry_violations_open ON ferry_violations (table_name)
  WHERE resolved_at IS NULL AND expired_at IS NULL;

-- the lww merge strategy: per row and column, the time of its last write through write-back
CREATE TABLE IF NOT EXISTS ferry_write_times (
  table_name text NOT NULL,
  row_id text NOT NULL,
  column_name text NOT NULL,
  ts text NOT NULL,
  PRIMARY KEY (table_name, row_id, column_name)
);

-- columns a merge strategy decided otherwise than the client sent; sync rules may send each
-- user their own
CREATE TABLE IF NOT EXISTS ferry_write_conflicts (
  id text PRIMARY KEY DEFAULT gen_random_uuid()::text,
  table_name text NOT NULL,
  row_id text NOT NULL,
  column_name text NOT NULL,
  user_id text NOT NULL,
  client_id text NOT NULL,
  op_id bigint NOT NULL,
  strategy text NOT NULL,
  resolution text NOT NULL,
  sent jsonb,
  old jsonb,
  stored jsonb,
  result jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ferry_write_conflicts_user_id ON ferry_write_conflicts (user_id);

-- the sync history: every op of every write-back batch with its outcome, kept
-- write_back.history.keep seconds (`ferry debug history TABLE ID`); not meant to be replicated
-- (with a publication FOR ALL TABLES, ferry warns that it is)
CREATE TABLE IF NOT EXISTS ferry_write_history (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  user_id text NOT NULL,
  client_id text NOT NULL,
  ops text NOT NULL,  -- one batch: a JSON array with an entry per op
  rows text NOT NULL  -- the rows its ops name, one ["table","id"] per line (for lookups)
);
CREATE INDEX IF NOT EXISTS ferry_write_history_at ON ferry_write_history USING brin (at);
-- the history one op a row
CREATE OR REPLACE VIEW ferry_write_history_ops AS SELECT h.id AS batch_id, h.at, h.user_id,
  h.client_id, (e->>'op_id')::bigint AS op_id, e->>'op' AS op, e->>'t' AS table_name,
  e->>'r' AS row_id, e->>'s' AS status, e->>'c' AS code, e->>'m' AS message,
  e->'sent' AS sent, e->'old' AS old, e->'stored' AS stored, e->'decided' AS decided,
  e->'v' AS violations, e->'ignored' AS ignored
  FROM ferry_write_history h, jsonb_array_elements(h.ops::jsonb) AS e;

-- grants. Reading: the snapshot reads every table the sync rules use. Writing: write-back
-- inserts, updates and deletes the tables that have write rules; narrow the second GRANT to
-- those tables (GRANT INSERT, UPDATE, DELETE ON todos, bookings TO ferry) if you prefer.
DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO ferry', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO ferry;
-- CREATE on the schema: ferry runs CREATE TABLE IF NOT EXISTS for its tables at every start, and
-- Postgres refuses that without this right even when the tables exist (a known limitation of
-- gateway/api/gw_write_stmt.c; once it checks first, this line and the OWNER TO lines can go)
GRANT CREATE ON SCHEMA public TO ferry;
ALTER TABLE ferry_write_log OWNER TO ferry;
ALTER TABLE ferry_violations OWNER TO ferry;
ALTER TABLE ferry_write_times OWNER TO ferry;
ALTER TABLE ferry_write_conflicts OWNER TO ferry;
ALTER TABLE ferry_write_history OWNER TO ferry;
ALTER VIEW ferry_write_history_ops OWNER TO ferry;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO ferry;
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ferry;
-- tables created later by the same owner are readable (and writable) by ferry too
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ferry;
