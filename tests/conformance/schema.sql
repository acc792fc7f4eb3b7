-- schema.sql -- the conformance tests' source database
CREATE TABLE announcements (id text PRIMARY KEY, body text NOT NULL);
CREATE TABLE lists (id text PRIMARY KEY, owner_id text NOT NULL, name text NOT NULL);
CREATE TABLE todos (id text PRIMARY KEY, list_id text NOT NULL, description text NOT NULL,
                    completed boolean NOT NULL DEFAULT false);
CREATE TABLE members (id text PRIMARY KEY, org_id text NOT NULL, user_id text NOT NULL);
CREATE TABLE org_docs (id text PRIMARY KEY, org_id text NOT NULL, title text NOT NULL);
CREATE TABLE counters (id text PRIMARY KEY, owner_id text NOT NULL, likes integer NOT NULL DEFAULT 0);
CREATE PUBLICATION ferry FOR ALL TABLES;
INSERT INTO announcements VALUES ('a1', 'hello everyone'), ('a2', 'second note');
INSERT INTO lists SELECT 'l-' || u || '-' || i, u, 'List ' || i || ' of ' || u
  FROM unnest(ARRAY['alice', 'bob', 'carol']) u, generate_series(1, 5) i;
INSERT INTO todos SELECT 't-' || l.id || '-' || i, l.id, 'todo ' || i, i % 3 = 0
  FROM lists l, generate_series(1, 40) i;
INSERT INTO counters VALUES ('k1', 'alice', 0);
INSERT INTO members VALUES ('m1', 'acme', 'alice'), ('m2', 'globex', 'bob');
INSERT INTO org_docs SELECT 'd-' || o || '-' || i, o, 'Doc ' || i
  FROM unnest(ARRAY['acme', 'globex']) o, generate_series(1, 10) i;
