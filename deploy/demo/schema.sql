-- schema.sql -- the demo's database: organisations, members, lists, todos, rooms and bookings
-- (loaded by deploy/demo.sh into a throwaway Postgres; see deploy/demo/sync-rules.yaml).
-- ferry creates its own tables (ferry_write_log, ferry_violations) at start.
CREATE TABLE orgs (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE members (id text PRIMARY KEY, org_id text NOT NULL REFERENCES orgs, user_id text NOT NULL);
CREATE TABLE lists (id text PRIMARY KEY, org_id text REFERENCES orgs, owner_id text NOT NULL,
                    name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL REFERENCES lists ON DELETE CASCADE,
                    org_id text REFERENCES orgs, -- copied from the list, so org members sync it
                    description text NOT NULL, completed boolean NOT NULL DEFAULT false,
                    created_by text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE announcements (id text PRIMARY KEY, body text NOT NULL);
CREATE TABLE rooms (id text PRIMARY KEY, org_id text NOT NULL REFERENCES orgs, name text NOT NULL);
CREATE TABLE bookings (id text PRIMARY KEY, room_id text NOT NULL REFERENCES rooms,
                       org_id text NOT NULL REFERENCES orgs, -- copied from the room, so org members sync it
                       booked_by text NOT NULL, starts_at timestamptz NOT NULL,
                       ends_at timestamptz NOT NULL, CHECK (ends_at > starts_at));
CREATE PUBLICATION ferry FOR ALL TABLES;

INSERT INTO orgs VALUES ('acme', 'Acme Corp'), ('globex', 'Globex');
INSERT INTO members VALUES ('m1', 'acme', 'alice'), ('m2', 'acme', 'bob'), ('m3', 'globex', 'carol');
INSERT INTO lists (id, org_id, owner_id, name) VALUES
  ('l-alice', NULL, 'alice', 'Alice''s errands'),
  ('l-bob', NULL, 'bob', 'Bob''s books'),
  ('l-acme', 'acme', 'alice', 'Acme launch'),
  ('l-globex', 'globex', 'carol', 'Globex audit');
INSERT INTO todos (id, list_id, org_id, description, created_by) VALUES
  ('t1', 'l-alice', NULL, 'Buy milk', 'alice'),
  ('t2', 'l-alice', NULL, 'Call the plumber', 'alice'),
  ('t3', 'l-bob', NULL, 'Read Dune', 'bob'),
  ('t4', 'l-acme', 'acme', 'Ship the website', 'alice'),
  ('t5', 'l-acme', 'acme', 'Write the press release', 'bob'),
  ('t6', 'l-globex', 'globex', 'Check the books', 'carol');
INSERT INTO announcements VALUES ('a1', 'Welcome to the Ferry demo');
INSERT INTO rooms VALUES ('r-board', 'acme', 'Boardroom'), ('r-lab', 'acme', 'Lab'),
  ('r-globex', 'globex', 'Globex kitchen');
INSERT INTO bookings VALUES
  ('b1', 'r-lab', 'acme', 'alice', '2030-01-07 09:00+00', '2030-01-07 10:00+00');
