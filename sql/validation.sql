-- Bad input gets an error that names the problem.
\set VERBOSITY default
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'grumpy', 'tok-1');
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('', 'happy', 'tok-1');
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'happy', '');
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES (repeat('u', 129), 'happy', 'tok-1');
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'happy', repeat('t', 4097));
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES (NULL, 'happy', 'tok-1');
INSERT INTO matchmaker.intents (user_id, mood, push_token, status)
VALUES ('u1', 'happy', 'tok-1', 'matched');

-- the longest accepted values
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES (repeat('u', 128), 'happy', repeat('t', 4096));
DELETE FROM matchmaker.intents;

-- one waiting intent per user
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'happy', 'tok-1');
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'sad', 'tok-1');
-- the same user twice in one statement
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u2', 'happy', 'tok-2'), ('u2', 'sad', 'tok-2');

-- after cancelling, the user may ask again
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'u1';
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('u1', 'sad', 'tok-1');

-- a finished intent cannot come back
UPDATE matchmaker.intents SET status = 'waiting'
WHERE user_id = 'u1' AND status = 'cancelled';
UPDATE matchmaker.intents SET mood = 'happy'
WHERE user_id = 'u1' AND status = 'waiting';

-- expires_at follows matchmaker.intent_ttl
SELECT expires_at - created_at AS ttl FROM matchmaker.intents
WHERE user_id = 'u1' AND status = 'waiting';

DELETE FROM matchmaker.intents;

-- an app role that is a member of matchmaker_app can do its whole job
CREATE ROLE regress_mm_app IN ROLE matchmaker_app;
SET ROLE regress_mm_app;
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('app1', 'happy', 'tok-a1'), ('app2', 'sad', 'tok-a2');
UPDATE matchmaker.intents SET status = 'cancelled'
WHERE user_id = 'app1' AND status = 'waiting';
UPDATE matchmaker.intents SET status = 'cancelled'
WHERE user_id = 'app2' AND status = 'waiting';
SELECT user_id, status FROM matchmaker.intents WHERE user_id LIKE 'app%';
-- but not the worker's part
INSERT INTO matchmaker.intents (user_id, mood, push_token)
VALUES ('app3', 'happy', 'tok-a3');
UPDATE matchmaker.intents SET status = 'expired'
WHERE user_id = 'app3' AND status = 'waiting';
SELECT * FROM matchmaker.matches;
DELETE FROM matchmaker.intents WHERE user_id = 'app3';
UPDATE matchmaker.intents SET match_id = 1 WHERE user_id = 'app1';
RESET ROLE;
DELETE FROM matchmaker.intents;
