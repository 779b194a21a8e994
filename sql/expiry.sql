-- Expiry queues an "expired" push for each intent that waited alone.
DELETE FROM matchmaker.outbox;
UPDATE matchmaker.intents SET status = 'cancelled' WHERE status = 'waiting';

INSERT INTO matchmaker.intents (user_id, mood, push_token, expires_at)
VALUES ('late', 'lonely', 'tok-late', now() - interval '1 second'),
	   ('early', 'lonely', 'tok-early', now() + interval '1 hour');
SELECT matchmaker.expire_pass();
SELECT user_id, status FROM matchmaker.intents
WHERE user_id IN ('late', 'early') ORDER BY user_id;
SELECT o.push_token, o.status, o.payload - 'intent_id' AS payload,
	   (o.payload->>'intent_id')::bigint = i.id AS names_intent
FROM matchmaker.outbox o JOIN matchmaker.intents i ON i.id = o.intent_id;

-- running it again changes nothing
SELECT matchmaker.expire_pass();

-- an expired intent cannot be cancelled or matched any more
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'late';
