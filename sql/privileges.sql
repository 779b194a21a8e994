-- The matchmaker_app role: what an app's backend may do, and that two
-- backends with their own login roles see only their own intents.

-- the role exists and cannot log in by itself
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb,
       rolbypassrls
FROM pg_roles WHERE rolname = 'matchmaker_app';

-- every SECURITY DEFINER function of the extension pins search_path
SELECT p.proname, p.proconfig
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
WHERE e.extname = 'matchmaker' AND p.prosecdef
ORDER BY p.proname;
SELECT count(*) AS definer_functions_without_pinned_search_path
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
WHERE e.extname = 'matchmaker' AND p.prosecdef
  AND NOT coalesce(p.proconfig @> '{"search_path=pg_catalog, pg_temp"}', false);

-- the role may execute end_match() and no other function of the extension
SELECT p.proname,
       has_function_privilege('matchmaker_app', p.oid, 'EXECUTE') AS app,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
JOIN pg_extension e ON e.oid = d.refobjid AND d.deptype = 'e'
WHERE e.extname = 'matchmaker'
ORDER BY p.proname;

-- table and view privileges, whole-table and per column
SELECT c.relname,
       has_table_privilege('matchmaker_app', c.oid, 'SELECT') AS sel,
       has_any_column_privilege('matchmaker_app', c.oid, 'SELECT') AS sel_cols,
       has_any_column_privilege('matchmaker_app', c.oid, 'INSERT') AS ins_cols,
       has_any_column_privilege('matchmaker_app', c.oid, 'UPDATE') AS upd_cols,
       has_table_privilege('matchmaker_app', c.oid, 'DELETE') AS del,
       has_table_privilege('matchmaker_app', c.oid, 'TRUNCATE') AS trunc
FROM pg_class c
WHERE c.relnamespace = 'matchmaker'::regnamespace AND c.relkind IN ('r', 'v')
ORDER BY c.relname;
SELECT a.attname,
       has_column_privilege('matchmaker_app', 'matchmaker.intents', a.attname,
                            'SELECT') AS sel,
       has_column_privilege('matchmaker_app', 'matchmaker.intents', a.attname,
                            'INSERT') AS ins,
       has_column_privilege('matchmaker_app', 'matchmaker.intents', a.attname,
                            'UPDATE') AS upd
FROM pg_attribute a
WHERE a.attrelid = 'matchmaker.intents'::regclass AND a.attnum > 0
ORDER BY a.attnum;

-- two app backends, each with its own role
CREATE ROLE regress_app_a NOLOGIN IN ROLE matchmaker_app;
CREATE ROLE regress_app_b NOLOGIN IN ROLE matchmaker_app;
INSERT INTO matchmaker.moods (mood) VALUES ('privileges');
UPDATE matchmaker.intents SET status = 'cancelled' WHERE status = 'waiting';

SET ROLE regress_app_a;
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('pa1', 'privileges', 'tok-pa1'), ('pa2', 'privileges', 'tok-pa2')
RETURNING user_id, status, created_by;
-- an app cannot pose as another role, nor set what the worker sets
INSERT INTO matchmaker.intents (user_id, mood, push_token, created_by)
VALUES ('pa9', 'privileges', 'tok-pa9', 'regress_app_b');
INSERT INTO matchmaker.intents (user_id, mood, push_token, status)
VALUES ('pa9', 'privileges', 'tok-pa9', 'matched');
INSERT INTO matchmaker.intents (user_id, mood, push_token, expires_at)
VALUES ('pa9', 'privileges', 'tok-pa9', now() + interval '1 year');
-- nor add moods
INSERT INTO matchmaker.moods (mood) VALUES ('sneaky');

SET ROLE regress_app_b;
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('pb1', 'privileges', 'tok-pb1'), ('pb2', 'privileges', 'tok-pb2')
RETURNING user_id, status, created_by;
RESET ROLE;

-- pair them, then record rooms and pushes as the worker would
SELECT matchmaker.match_pass();
UPDATE matchmaker.matches
SET status = 'ready', room = 'room-' || user_ids[1], ready_at = now()
WHERE mood = 'privileges' AND status = 'pending';
INSERT INTO matchmaker.outbox (intent_id, match_id, push_token, payload)
SELECT i.id, i.match_id, i.push_token,
       jsonb_build_object('type', 'match', 'intent_id', i.id,
                          'match_id', i.match_id, 'mood', i.mood,
                          'room', m.room, 'token', 'join-' || i.user_id)
FROM matchmaker.intents i JOIN matchmaker.matches m ON m.id = i.match_id
WHERE i.mood = 'privileges';
INSERT INTO matchmaker.dead_push_tokens (push_token, provider, reason)
VALUES ('tok-gone', 'fcm', 'FCM error UNREGISTERED (HTTP 404)');

SET ROLE regress_app_a;
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('pa3', 'privileges', 'tok-pa3'), ('pa4', 'privileges', 'tok-pa4');
SET ROLE regress_app_b;
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('pb3', 'privileges', 'tok-pb3');
-- user ids are shared by all apps: a user waiting for one app cannot wait
-- for another, and the error names the waiting user
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('pa3', 'privileges', 'tok-pa3');

-- each app reads only its own intents, and their results
SET ROLE regress_app_a;
SELECT user_id, status, match_id IS NOT NULL AS matched, created_by
FROM matchmaker.intents ORDER BY user_id;
SELECT user_id, status, room, token, push_data ->> 'type' AS push_type
FROM matchmaker.app_intents ORDER BY user_id;
SELECT count(*) AS rows_of_b FROM matchmaker.app_intents
WHERE user_id LIKE 'pb%';
SET ROLE regress_app_b;
SELECT user_id, status, match_id IS NOT NULL AS matched, created_by
FROM matchmaker.intents ORDER BY user_id;
SELECT user_id, status, room, token, push_data ->> 'type' AS push_type
FROM matchmaker.app_intents ORDER BY user_id;

-- an app cannot cancel another app's intent: the row is invisible
SET ROLE regress_app_a;
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'pb3';
-- but cancels its own waiting intent
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'pa3'
RETURNING user_id, status;
-- a matched intent is no longer the app's to cancel
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'pa1';
-- every other change is rejected
UPDATE matchmaker.intents SET status = 'expired' WHERE user_id = 'pa4';
UPDATE matchmaker.intents SET user_id = 'pa5' WHERE user_id = 'pa4';
UPDATE matchmaker.intents SET push_token = 'tok-new' WHERE user_id = 'pa4';
DELETE FROM matchmaker.intents WHERE user_id = 'pa4';
TRUNCATE matchmaker.intents;
RESET ROLE;
SELECT user_id, status FROM matchmaker.intents
WHERE user_id IN ('pa1', 'pa3', 'pa4', 'pb3') ORDER BY user_id;

-- push tokens, the outbox, dead push tokens and the views for operators
-- are closed
SET ROLE regress_app_a;
SELECT push_token FROM matchmaker.intents;
SELECT * FROM matchmaker.intents;
SELECT * FROM matchmaker.outbox;
SELECT * FROM matchmaker.dead_push_tokens;
DELETE FROM matchmaker.dead_push_tokens;
SELECT * FROM matchmaker.matches;
SELECT * FROM matchmaker.stats;
SELECT * FROM matchmaker.waiting;
INSERT INTO matchmaker.outbox (intent_id, push_token, payload)
VALUES (1, 'tok', '{}');
-- of matches, an app reads only the ids of its own
SELECT count(*) AS own_matches FROM matchmaker.matches;

-- internal functions are closed
SELECT matchmaker.match_pass();
SELECT matchmaker.expire_pass();
SELECT matchmaker.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'id', 1, 'body');
SELECT matchmaker.agora_token('970CA35de60c44645bbae8a215061b33',
	'5CFd2fd1755d40ecb72977518be15d3b', 'c', 1, 1, 1, 1, true);
SELECT matchmaker.intents_wake();

-- an app ends its own match, once, and not another app's
RESET ROLE;
SELECT max(match_id) AS match_a FROM matchmaker.intents
WHERE user_id = 'pa1' \gset
SELECT max(match_id) AS match_b FROM matchmaker.intents
WHERE user_id = 'pb1' \gset
SET ROLE regress_app_a;
SELECT matchmaker.end_match(:match_b) AS ended_other;
SELECT matchmaker.end_match(:match_a) AS ended_own;
SELECT matchmaker.end_match(:match_a) AS ended_again;
UPDATE matchmaker.matches SET ended_at = NULL WHERE id = :match_a;
RESET ROLE;
SELECT user_ids, ended_at IS NOT NULL AS ended FROM matchmaker.matches
WHERE id IN (:match_a, :match_b) ORDER BY id;

-- settings with secrets or key paths are hidden, and none can be changed
SET ROLE regress_app_a;
SELECT name FROM pg_settings
WHERE name IN ('matchmaker.webhook_secret', 'matchmaker.agora_app_certificate',
               'matchmaker.livekit_api_secret', 'matchmaker.fcm_key_file',
               'matchmaker.apns_key_file', 'matchmaker.ca_file',
               'matchmaker.push_url', 'matchmaker.room_url');
SHOW matchmaker.webhook_secret;
SHOW matchmaker.agora_app_certificate;
SHOW matchmaker.livekit_api_secret;
SHOW matchmaker.fcm_key_file;
SHOW matchmaker.apns_key_file;
SHOW matchmaker.ca_file;
SELECT current_setting('matchmaker.livekit_api_secret');
SET matchmaker.ca_file = '/tmp/ca.pem';
ALTER SYSTEM SET matchmaker.ca_file = '/tmp/ca.pem';
RESET ROLE;

DROP ROLE regress_app_a;
DROP ROLE regress_app_b;

-- matchmaker.ca_file must name a readable regular file; a CA bundle may
-- be readable by others, unlike a key file
ALTER SYSTEM SET matchmaker.ca_file = '/nonexistent/ca.pem';
ALTER SYSTEM SET matchmaker.ca_file = '/';
SELECT current_setting('data_directory') || '/regress-ca.pem' AS cafile \gset
COPY (SELECT 'not checked for content here') TO :'cafile';
ALTER SYSTEM SET matchmaker.ca_file = 'regress-ca.pem';
ALTER SYSTEM RESET matchmaker.ca_file;
