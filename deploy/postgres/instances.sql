-- instances.sql -- a storage database for several Ferry instances (storage.kind postgres)
--
-- Run once per cluster as a superuser, after setup.sql (which creates the role ferry):
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/postgres/instances.sql
-- It creates the database ferry_storage owned by ferry, so that ferry may create its schema
-- ("ferry", storage.schema) there at its first start; storage.uri then names it, e.g.
--   postgresql://ferry:PASSWORD@db.internal:5432/ferry_storage
-- A database of its own keeps Ferry's tables out of a publication FOR ALL TABLES. Storage may
-- also live in the application's database (a schema of its own) when the publication lists the
-- application's tables instead: Ferry refuses to start when the publication would replicate its
-- own tables.
--
-- Grants: the role needs CREATE on the storage database (ownership gives it), or a schema
-- created for it (CREATE SCHEMA ferry AUTHORIZATION ferry). A new leader ends the walsender that
-- a dead leader left on the replication slot (pg_terminate_backend): allowed for backends of the
-- same role, so every instance should connect as ferry; with several roles, GRANT
-- pg_signal_backend TO ferry.
SELECT 'CREATE DATABASE ferry_storage OWNER ferry'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'ferry_storage') \gexec
