-- Push signing and the settings that hold secrets.

-- Standard Webhooks' published test vector
SELECT matchmaker.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330, '{"test": 2432232314}')
	= 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=' AS matches_vector;
-- any change to id, time or body changes the signature
SELECT matchmaker.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265331, '{"test": 2432232314}')
	= 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=' AS matches_vector;
SELECT matchmaker.webhook_signature('not-a-secret', 'id', 1, 'body');
SELECT matchmaker.webhook_signature('whsec_c2hvcnQ=', 'id', 1, 'body');

-- a malformed secret is accepted, since rejecting it would print it in
-- the error; each delivery reports it instead, without the value
ALTER SYSTEM SET matchmaker.webhook_secret = 'whsec_c2hvcnQ=';
ALTER SYSTEM RESET matchmaker.webhook_secret;
-- bad key files are rejected before they are used
ALTER SYSTEM SET matchmaker.fcm_key_file = '/nonexistent/key.json';
ALTER SYSTEM SET matchmaker.apns_key_file = '/nonexistent/key.p8';
-- a key file that exists but contains no key; relative paths are read from
-- the data directory
SELECT current_setting('data_directory') || '/regress-key.json' AS keyfile \gset
COPY (SELECT 'not a key') TO :'keyfile';
ALTER SYSTEM SET matchmaker.fcm_key_file = 'regress-key.json';
ALTER SYSTEM SET matchmaker.apns_key_file = 'regress-key.json';
ALTER SYSTEM SET matchmaker.push_provider = 'fcm';
ALTER SYSTEM RESET matchmaker.push_provider;

-- a non-superuser sees none of the secrets or key paths
CREATE ROLE regress_mm_reader;
SET ROLE regress_mm_reader;
SELECT name FROM pg_settings
WHERE name LIKE 'matchmaker.%' ORDER BY name;
SHOW matchmaker.webhook_secret;
SHOW matchmaker.fcm_key_file;
SELECT matchmaker.webhook_signature('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
	'id', 1, 'body');
RESET ROLE;
DROP ROLE regress_mm_reader;

-- dead push tokens are plain rows the app can read and clear
INSERT INTO matchmaker.dead_push_tokens (push_token, provider, reason)
VALUES ('gone-token', 'fcm', 'FCM error UNREGISTERED (HTTP 404)');
SELECT push_token, provider, reason FROM matchmaker.dead_push_tokens;
DELETE FROM matchmaker.dead_push_tokens;
