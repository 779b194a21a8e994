-- The extension's objects and the defaults operators rely on.
CREATE EXTENSION matchmaker;

-- ids start from the install time; the tests restart them for stable output
SELECT min(last_value) > 1600000000000 AS ids_from_install_time
FROM pg_sequences WHERE schemaname = 'matchmaker';
ALTER TABLE matchmaker.intents ALTER COLUMN id RESTART WITH 1;
ALTER TABLE matchmaker.matches ALTER COLUMN id RESTART WITH 1;
ALTER TABLE matchmaker.outbox ALTER COLUMN id RESTART WITH 1;

SELECT mood FROM matchmaker.moods ORDER BY mood;

-- the worker's settings exist and have their documented defaults
SELECT name, setting, unit, context
FROM pg_settings WHERE name LIKE 'matchmaker.%' ORDER BY name;

-- every intents column an app does not give has a default
SELECT column_name, is_nullable, column_default IS NOT NULL AS has_default,
       is_identity
FROM information_schema.columns
WHERE table_schema = 'matchmaker' AND table_name = 'intents'
ORDER BY ordinal_position;

-- the tables are logged: they must survive a crash
SELECT relname, relpersistence FROM pg_class
WHERE relnamespace = 'matchmaker'::regnamespace AND relkind = 'r'
ORDER BY relname;

-- operators add and remove moods with plain SQL
INSERT INTO matchmaker.moods (mood) VALUES ('nostalgic');
DELETE FROM matchmaker.moods WHERE mood = 'nostalgic';
\set VERBOSITY terse
INSERT INTO matchmaker.moods (mood) VALUES ('Not A Mood');
\set VERBOSITY default

-- settings are checked before they reach the configuration file
ALTER SYSTEM SET matchmaker.intent_ttl = 0;
ALTER SYSTEM SET matchmaker.room_provider = 'zoom';
ALTER SYSTEM SET matchmaker.push_provider = 'carrier-pigeon';
ALTER SYSTEM SET matchmaker.push_url = 'file:///etc/passwd';
ALTER SYSTEM SET matchmaker.room_url = 'gopher://127.0.0.1/janus';
-- and are for the server's configuration, not sessions
SET matchmaker.intent_ttl = 30;
