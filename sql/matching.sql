-- Matching decisions, one pass at a time.
CREATE FUNCTION want(u text, m text) RETURNS bigint LANGUAGE sql AS $$
	INSERT INTO matchmaker.intents (user_id, mood, push_token)
	VALUES (u, m, 'tok-' || u) RETURNING id
$$;

-- a lone intent stays waiting
SELECT want('alice', 'happy') > 0 AS inserted;
SELECT matchmaker.match_pass();
SELECT user_id, status FROM matchmaker.intents ORDER BY id;

-- different moods never pair
SELECT want('bob', 'sad') > 0 AS inserted;
SELECT matchmaker.match_pass();

-- same mood pairs, oldest first: alice with carol, dave waits
SELECT want('carol', 'happy') > 0 AS inserted;
SELECT want('dave', 'happy') > 0 AS inserted;
SELECT matchmaker.match_pass();
SELECT user_id, mood, status, match_id IS NOT NULL AS has_match
FROM matchmaker.intents ORDER BY id;
SELECT mood, status, user_ids, attempts, room
FROM matchmaker.matches ORDER BY id;

-- both intents point at the match, and the match lists both
SELECT m.user_ids = array_agg(i.user_id ORDER BY i.id) AS consistent
FROM matchmaker.matches m JOIN matchmaker.intents i ON i.match_id = m.id
GROUP BY m.id, m.user_ids;

-- a cancelled intent is never matched
UPDATE matchmaker.intents SET status = 'cancelled' WHERE user_id = 'dave';
SELECT want('erin', 'happy') > 0 AS inserted;
SELECT matchmaker.match_pass();
SELECT user_id, status FROM matchmaker.intents WHERE user_id IN ('dave', 'erin')
ORDER BY id;

-- a deleted intent neither
SELECT want('frank', 'happy') > 0 AS inserted;
DELETE FROM matchmaker.intents WHERE user_id = 'erin';
SELECT matchmaker.match_pass();
SELECT user_id, status FROM matchmaker.intents WHERE user_id = 'frank';

-- an intent already past its expiry is not matched, even if not yet expired
SELECT want('gina', 'happy') > 0 AS inserted;
UPDATE matchmaker.intents SET expires_at = now() - interval '1 second'
WHERE user_id = 'frank';
SELECT matchmaker.match_pass();
SELECT user_id, status FROM matchmaker.intents WHERE user_id IN ('frank', 'gina')
ORDER BY id;

-- a batch smaller than the queue still pairs oldest first
DELETE FROM matchmaker.intents WHERE status = 'waiting';
SELECT count(want('c' || g, 'chill')) FROM generate_series(1, 7) g;
SELECT matchmaker.match_pass(4);
SELECT user_id, status FROM matchmaker.intents
WHERE mood = 'chill' ORDER BY id;
SELECT matchmaker.match_pass();
SELECT status, count(*) FROM matchmaker.intents
WHERE mood = 'chill' GROUP BY status ORDER BY status;

-- many moods in one pass
SELECT count(want('m' || g, (ARRAY['happy','sad','bored','lonely'])[g % 4 + 1]))
FROM generate_series(1, 40) g;
SELECT matchmaker.match_pass();
SELECT mood, count(*) FROM matchmaker.matches m
WHERE EXISTS (SELECT 1 FROM matchmaker.intents i
			  WHERE i.match_id = m.id AND i.user_id LIKE 'm%')
GROUP BY mood ORDER BY mood;

-- nobody is in two matches
SELECT count(*) AS intents_in_two_matches FROM (
	SELECT unnest(intent_ids) AS id FROM matchmaker.matches
) x GROUP BY id HAVING count(*) > 1;

-- the limit applies to each mood: two moods with four waiting each
DELETE FROM matchmaker.intents WHERE status = 'waiting';
SELECT count(want('pm' || g, (ARRAY['happy','sad'])[g % 2 + 1]))
FROM generate_series(1, 8) g;
SELECT matchmaker.match_pass(2);
SELECT mood, count(*) AS still_waiting FROM matchmaker.intents
WHERE user_id LIKE 'pm%' AND status = 'waiting' GROUP BY mood ORDER BY mood;

SELECT matchmaker.match_pass(1);

-- an intent past its expiry time is never paired, even before the expiry
-- pass marks it, and the intents around it pair as if it were not there
UPDATE matchmaker.intents SET status = 'cancelled' WHERE status = 'waiting';
INSERT INTO matchmaker.intents (user_id, mood, push_token, expires_at)
VALUES ('old-1', 'bored', 'tok-old-1', now() - interval '1 second'),
	   ('new-1', 'bored', 'tok-new-1', now() + interval '1 hour'),
	   ('old-2', 'chill', 'tok-old-2', now() - interval '1 second'),
	   ('new-2', 'chill', 'tok-new-2', now() + interval '1 hour'),
	   ('new-3', 'chill', 'tok-new-3', now() + interval '1 hour');
SELECT matchmaker.match_pass();
SELECT user_id, status FROM matchmaker.intents
WHERE user_id IN ('old-1', 'new-1', 'old-2', 'new-2', 'new-3') ORDER BY id;
UPDATE matchmaker.intents SET status = 'cancelled' WHERE status = 'waiting';
