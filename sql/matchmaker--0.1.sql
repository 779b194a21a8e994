/* sql/matchmaker--0.1.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION matchmaker" to load this file. \quit

/*
 * The tables below are the matchmaker's whole state machine.  The worker
 * keeps nothing that matters in memory: every step it takes is a short
 * transaction that moves rows from one status to the next, so a crash or a
 * restart resumes from what the tables say.
 *
 *   intents:  waiting -> matched | expired | cancelled
 *   matches:  pending -> ready | failed     (pending = waiting for its room)
 *   outbox:   pending -> sent | failed
 */

CREATE TABLE matchmaker.moods (
	mood		text PRIMARY KEY
				CONSTRAINT moods_mood_format
				CHECK (mood ~ '^[a-z][a-z0-9_-]{0,31}$'),
	description text NOT NULL DEFAULT '',
	created_at	timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE matchmaker.moods IS
	'moods users can pick; add or remove them with INSERT and DELETE';

INSERT INTO matchmaker.moods (mood, description) VALUES
	('happy', 'in a good mood and up for a chat'),
	('sad', 'having a rough time'),
	('chill', 'relaxed, nothing in particular'),
	('bored', 'looking for something to do'),
	('excited', 'something great happened'),
	('lonely', 'wants company'),
	('curious', 'wants to hear someone new'),
	('stressed', 'needs to talk it off');

CREATE TABLE matchmaker.matches (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	mood		text NOT NULL,
	status		text NOT NULL DEFAULT 'pending'
				CONSTRAINT matches_status_valid
				CHECK (status IN ('pending', 'ready', 'failed')),
	intent_ids	bigint[] NOT NULL,
	user_ids	text[] NOT NULL,
	room		text,
	-- provider-specific state kept across attempts (the room id and tokens
	-- chosen before the first request, so a retry requests the same room)
	plan		jsonb,
	attempts	integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	-- pid of the worker whose request is in flight; see outbox.claimed_by
	claimed_by	integer,
	last_error	text,
	created_at	timestamptz NOT NULL DEFAULT now(),
	ready_at	timestamptz,
	-- set by matchmaker.end_match() when the call is over
	ended_at	timestamptz,
	-- when the worker destroyed the room (providers whose rooms need it)
	room_closed_at timestamptz,
	CONSTRAINT matches_pair
		CHECK (cardinality(intent_ids) = 2 AND cardinality(user_ids) = 2),
	CONSTRAINT matches_ready_has_room
		CHECK (status <> 'ready' OR (room IS NOT NULL AND ready_at IS NOT NULL))
);

CREATE INDEX matches_due ON matchmaker.matches (next_attempt_at)
	WHERE status = 'pending';
CREATE INDEX matches_open_rooms ON matchmaker.matches (id)
	WHERE plan IS NOT NULL AND room_closed_at IS NULL;

CREATE TABLE matchmaker.intents (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	user_id		text NOT NULL
				CONSTRAINT intents_user_id_length
				CHECK (octet_length(user_id) BETWEEN 1 AND 128),
	mood		text NOT NULL,
	push_token	text NOT NULL
				CONSTRAINT intents_push_token_length
				CHECK (octet_length(push_token) BETWEEN 1 AND 4096),
	status		text NOT NULL DEFAULT 'waiting'
				CONSTRAINT intents_status_valid
				CHECK (status IN ('waiting', 'matched', 'expired',
								  'cancelled', 'failed')),
	created_at	timestamptz NOT NULL DEFAULT now(),
	expires_at	timestamptz,
	match_id	bigint
				CONSTRAINT intents_match_fkey
				REFERENCES matchmaker.matches (id),
	matched_at	timestamptz,
	-- the role that inserted the intent: the only role, besides superusers,
	-- that sees and cancels it (see the row security policies below)
	created_by	name NOT NULL DEFAULT current_user,
	CONSTRAINT intents_matched_has_match
		CHECK (status <> 'matched' OR match_id IS NOT NULL),
	CONSTRAINT intents_waiting_has_no_match
		CHECK (status <> 'waiting' OR match_id IS NULL)
);

COMMENT ON TABLE matchmaker.intents IS
	'one row per user asking to be matched; insert (user_id, mood, push_token)';

-- at most one waiting intent per user; the trigger gives the friendly
-- error, this index closes the race between two concurrent inserts
CREATE UNIQUE INDEX intents_one_waiting_per_user
	ON matchmaker.intents (user_id) WHERE status = 'waiting';

-- what the matcher and the expiry pass scan
CREATE INDEX intents_waiting ON matchmaker.intents (mood, id)
	WHERE status = 'waiting';
CREATE INDEX intents_waiting_expiry ON matchmaker.intents (expires_at)
	WHERE status = 'waiting';
CREATE INDEX intents_match_id ON matchmaker.intents (match_id)
	WHERE match_id IS NOT NULL;

CREATE TABLE matchmaker.outbox (
	id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	intent_id	bigint NOT NULL,
	match_id	bigint
				CONSTRAINT outbox_match_fkey
				REFERENCES matchmaker.matches (id),
	push_token	text NOT NULL,
	payload		jsonb NOT NULL,
	status		text NOT NULL DEFAULT 'pending'
				CONSTRAINT outbox_status_valid
				CHECK (status IN ('pending', 'sent', 'failed')),
	attempts	integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	/*
	 * While a request is in flight the row is leased: next_attempt_at lies
	 * past the longest the request can take, and claimed_by is the
	 * worker's pid.  A worker that starts up takes back the leases of
	 * workers that are gone instead of waiting them out.
	 */
	claimed_by	integer,
	last_error	text,
	created_at	timestamptz NOT NULL DEFAULT now(),
	sent_at		timestamptz,
	CONSTRAINT outbox_sent_has_time
		CHECK (status <> 'sent' OR sent_at IS NOT NULL)
);

CREATE INDEX outbox_due ON matchmaker.outbox (next_attempt_at)
	WHERE status = 'pending';
-- how matchmaker.app_intents finds the push of an intent
CREATE INDEX outbox_intent_id ON matchmaker.outbox (intent_id);

/*
 * Push tokens the push service called dead (app uninstalled, token from
 * another project, malformed).  A cleanup job of the app reads this to
 * clean up the app's own records, and deletes rows it has handled.  It
 * holds every app role's tokens, so matchmaker_app has no access.
 */
CREATE TABLE matchmaker.dead_push_tokens (
	push_token	text PRIMARY KEY,
	provider	text NOT NULL,
	reason		text NOT NULL,
	created_at	timestamptz NOT NULL DEFAULT now()
);

/*
 * Input checks, with messages that name the bad value, and the columns an
 * app does not set (src/intents.c).  The CHECK constraints above stay as
 * the last line of defence.
 */
CREATE FUNCTION matchmaker.intents_before_insert()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'matchmaker_intents_before_insert';

CREATE TRIGGER intents_before_insert
	BEFORE INSERT ON matchmaker.intents
	FOR EACH ROW EXECUTE FUNCTION matchmaker.intents_before_insert();

/*
 * Apps may only cancel a waiting intent; every other status change is the
 * worker's, which runs as a superuser.  Catching a client that tries, for
 * instance, to put a matched intent back to waiting keeps the state
 * machine honest (src/intents.c).
 */
CREATE FUNCTION matchmaker.intents_before_update()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'matchmaker_intents_before_update';

CREATE TRIGGER intents_before_update
	BEFORE UPDATE ON matchmaker.intents
	FOR EACH ROW EXECUTE FUNCTION matchmaker.intents_before_update();

/*
 * DELETE cancels a waiting intent.  Once matched, the row belongs to its
 * match until the room is made or has failed: deleting it earlier would
 * leave the other user in a room that nobody else is told to join.
 */
CREATE FUNCTION matchmaker.intents_before_delete()
RETURNS trigger
LANGUAGE plpgsql
-- reads tables the inserting role need not see
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- the status is tested outside the subquery, so that the planner
	-- reads the primary key and not the partial index of pending matches
	IF OLD.status = 'matched' AND
		(SELECT m.status FROM matchmaker.matches m
		 WHERE m.id = OLD.match_id) = 'pending' THEN
		RAISE EXCEPTION 'intent % is matched and its room is being made', OLD.id
			USING ERRCODE = 'object_in_use',
				  HINT = 'Only a waiting intent can be cancelled.';
	END IF;
	RETURN OLD;
END
$$;

CREATE TRIGGER intents_before_delete
	BEFORE DELETE ON matchmaker.intents
	FOR EACH ROW EXECUTE FUNCTION matchmaker.intents_before_delete();

/*
 * Wake the worker.  With the library preloaded, the inserting transaction
 * sets the worker's latch when it commits; otherwise it sends an empty
 * NOTIFY on channel "matchmaker", which the worker LISTENs for.  Either
 * way the signal only says "look again", and the worker also scans on a
 * timer, so a lost wake-up costs at most one poll interval.
 */
CREATE FUNCTION matchmaker.intents_wake()
RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'matchmaker_intents_wake';

CREATE TRIGGER intents_wake
	AFTER INSERT ON matchmaker.intents
	FOR EACH STATEMENT EXECUTE FUNCTION matchmaker.intents_wake();

/*
 * One matching pass: pairs waiting intents of the same mood, oldest first,
 * taking at most max_intents of each mood, and returns the number of
 * matches made.  The worker runs the same code;
 * calling it by hand is how the tests make matching deterministic.
 */
CREATE FUNCTION matchmaker.match_pass(max_intents integer DEFAULT 1000)
RETURNS integer
LANGUAGE c STRICT VOLATILE
AS 'MODULE_PATHNAME', 'matchmaker_match_pass';

/*
 * Expire waiting intents whose time is up, queueing an "expired" push for
 * each.  Returns how many expired.
 */
CREATE FUNCTION matchmaker.expire_pass(max_intents integer DEFAULT 1000)
RETURNS integer
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
	WITH due AS (
		SELECT id FROM matchmaker.intents
		WHERE status = 'waiting' AND expires_at <= now()
		ORDER BY expires_at
		LIMIT max_intents
		FOR UPDATE SKIP LOCKED
	), expired AS (
		UPDATE matchmaker.intents i SET status = 'expired'
		FROM due WHERE i.id = due.id
		RETURNING i.id, i.mood, i.push_token
	), queued AS (
		INSERT INTO matchmaker.outbox (intent_id, push_token, payload)
		SELECT id, push_token,
			   jsonb_build_object('type', 'expired', 'intent_id', id,
								  'mood', mood)
		FROM expired
		RETURNING 1
	)
	SELECT count(*)::integer FROM queued
$$;

/*
 * The webhook-signature value the webhook provider sends, for checking
 * receivers and test vectors.
 */
CREATE FUNCTION matchmaker.webhook_signature(secret text, msg_id text,
											 unix_time bigint, body text)
RETURNS text
LANGUAGE c STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'matchmaker_webhook_signature';

/*
 * The app calls this when a call is over, so that the room is destroyed
 * now rather than after matchmaker.room_lifetime.  Returns false if the
 * match does not exist, had already ended, or (for matchmaker_app members)
 * holds no intent of the caller.  It runs with the caller's rights, so the
 * row security policies on matchmaker.matches decide which matches an app
 * may end.
 */
CREATE FUNCTION matchmaker.end_match(match_id bigint)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	WITH ended AS (
		UPDATE matchmaker.matches SET ended_at = now()
		WHERE id = match_id AND ended_at IS NULL
		RETURNING 1
	)
	SELECT count(*) > 0 FROM ended
$$;

/*
 * An Agora AccessToken2 RTC token with every input given, for checking
 * the token builder against published vectors.
 */
CREATE FUNCTION matchmaker.agora_token(app_id text, certificate text,
									   channel text, uid bigint,
									   issue_ts bigint, expire integer,
									   salt bigint, publisher boolean)
RETURNS text
LANGUAGE c STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'matchmaker_agora_token';

CREATE VIEW matchmaker.stats AS
	SELECT 'intents'::text AS kind, i.mood AS key, i.status,
		   count(*) AS count,
		   max(now() - i.created_at) FILTER (WHERE i.status = 'waiting')
			   AS oldest_wait
	FROM matchmaker.intents i
	GROUP BY i.mood, i.status
	UNION ALL
	SELECT 'matches', NULL, m.status, count(*), NULL
	FROM matchmaker.matches m
	GROUP BY m.status
	UNION ALL
	SELECT 'pushes', NULL, o.status, count(*), NULL
	FROM matchmaker.outbox o
	GROUP BY o.status;

COMMENT ON VIEW matchmaker.stats IS
	'counts of intents by mood and status, matches and pushes by status';

/* Waiting intents and the longest wait, per mood. */
CREATE VIEW matchmaker.waiting AS
	SELECT m.mood,
		   count(i.id) AS waiting,
		   max(now() - i.created_at) AS oldest_wait
	FROM matchmaker.moods m
	LEFT JOIN matchmaker.intents i
		ON i.mood = m.mood AND i.status = 'waiting'
	GROUP BY m.mood;

/*
 * Ids start from the install time in milliseconds, so that they stay
 * unique across DROP and CREATE EXTENSION: receivers drop duplicates by
 * webhook-id (the outbox id), and room names derive from match ids.
 */
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('matchmaker.' || t, 'id'),
						 (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
FROM unnest(ARRAY['intents', 'matches', 'outbox']) AS t;

REVOKE ALL ON ALL TABLES IN SCHEMA matchmaker FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.match_pass(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.expire_pass(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.webhook_signature(text, text, bigint, text)
	FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.end_match(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.agora_token(text, text, text, bigint, bigint,
											  integer, bigint, boolean)
	FROM PUBLIC;

-- the seeded moods come back with CREATE EXTENSION; dump only the others
SELECT pg_catalog.pg_extension_config_dump('matchmaker.moods',
	$$WHERE mood NOT IN ('happy', 'sad', 'chill', 'bored', 'excited', 'lonely', 'curious', 'stressed')$$);
SELECT pg_catalog.pg_extension_config_dump('matchmaker.intents', '');
SELECT pg_catalog.pg_extension_config_dump('matchmaker.matches', '');
SELECT pg_catalog.pg_extension_config_dump('matchmaker.outbox', '');

/*
 * The role for the app's backend services.  Roles belong to the whole
 * cluster, not to one database, so it is created only when missing and
 * DROP EXTENSION leaves it behind.  It cannot log in: an operator grants
 * it to the backend's own login role.
 *
 * A member may insert intents, read and cancel the intents its own role
 * inserted (intents.created_by), read their results through
 * matchmaker.app_intents, end its own matches and list the moods.  It has
 * no access to push tokens, the outbox, dead_push_tokens, other roles'
 * rows or the internal functions.
 */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
				   WHERE rolname = 'matchmaker_app') THEN
		CREATE ROLE matchmaker_app NOLOGIN;
	END IF;
END
$$;

COMMENT ON ROLE matchmaker_app IS
	'matchmaker: insert, read and cancel own intents; grant to app backends';

/*
 * Intents of one role are invisible to the others.  Superusers (the
 * worker) and the tables' owner bypass these policies.
 */
ALTER TABLE matchmaker.intents ENABLE ROW LEVEL SECURITY;

CREATE POLICY intents_own_select ON matchmaker.intents
	FOR SELECT TO matchmaker_app
	USING (created_by = current_user);
CREATE POLICY intents_own_insert ON matchmaker.intents
	FOR INSERT TO matchmaker_app
	WITH CHECK (created_by = current_user);
-- the before-update trigger allows apps no change but waiting -> cancelled
CREATE POLICY intents_own_cancel ON matchmaker.intents
	FOR UPDATE TO matchmaker_app
	USING (created_by = current_user AND status = 'waiting')
	WITH CHECK (created_by = current_user);

/*
 * matchmaker.end_match() sets ended_at on a match that holds an intent of
 * the caller and has not ended yet.
 */
ALTER TABLE matchmaker.matches ENABLE ROW LEVEL SECURITY;

CREATE POLICY matches_own_select ON matchmaker.matches
	FOR SELECT TO matchmaker_app
	USING (EXISTS (SELECT 1 FROM matchmaker.intents i
				   WHERE i.match_id = matches.id
				   AND i.created_by = current_user));
CREATE POLICY matches_own_end ON matchmaker.matches
	FOR UPDATE TO matchmaker_app
	USING (ended_at IS NULL AND
		   EXISTS (SELECT 1 FROM matchmaker.intents i
				   WHERE i.match_id = matches.id
				   AND i.created_by = current_user))
	WITH CHECK (ended_at IS NOT NULL);

/*
 * What an app reads about its own intents: the status, the match, and
 * for a matched intent the room, the join token and the whole push data
 * that was queued for that user (with the provider's extra fields such as
 * Agora's app_id and uid or LiveKit's url).  The view reads the tables
 * with its owner's rights, so its own filter on created_by is what keeps
 * other roles' rows out; security_barrier makes that filter run before
 * any condition the caller adds.
 */
CREATE VIEW matchmaker.app_intents WITH (security_barrier) AS
	SELECT i.id AS intent_id, i.user_id, i.mood, i.status, i.created_at,
		   i.expires_at, i.match_id, i.matched_at,
		   p.payload ->> 'room' AS room,
		   p.payload ->> 'token' AS token,
		   p.payload AS push_data
	FROM matchmaker.intents i
	LEFT JOIN LATERAL
		(SELECT o.payload FROM matchmaker.outbox o
		 WHERE o.intent_id = i.id
		 ORDER BY o.id
		 LIMIT 1) p ON true
	WHERE i.created_by = current_user;

COMMENT ON VIEW matchmaker.app_intents IS
	'the calling role''s intents with their match, room and join token';

-- trigger functions need no EXECUTE privilege to fire, and are never called directly
REVOKE ALL ON FUNCTION matchmaker.intents_before_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.intents_before_update() FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.intents_before_delete() FROM PUBLIC;
REVOKE ALL ON FUNCTION matchmaker.intents_wake() FROM PUBLIC;

GRANT USAGE ON SCHEMA matchmaker TO matchmaker_app;
GRANT SELECT ON matchmaker.moods TO matchmaker_app;
GRANT INSERT (user_id, mood, push_token) ON matchmaker.intents
	TO matchmaker_app;
GRANT SELECT (id, user_id, mood, status, created_at, expires_at, match_id,
			  matched_at, created_by),
	UPDATE (status) ON matchmaker.intents TO matchmaker_app;
GRANT SELECT (id, ended_at), UPDATE (ended_at) ON matchmaker.matches
	TO matchmaker_app;
GRANT SELECT ON matchmaker.app_intents TO matchmaker_app;
GRANT EXECUTE ON FUNCTION matchmaker.end_match(bigint) TO matchmaker_app;
