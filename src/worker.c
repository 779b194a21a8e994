/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The matchmaker background worker: its loop and its transactions.
 *
 * One loop serves everything.  It sleeps on a single wait event set that
 * contains the process latch, a libpq connection LISTENing for new intents,
 * and the sockets of the HTTP requests in flight.  Each time it wakes it
 *
 *	 1. records the outcome of finished requests (one transaction),
 *	 2. runs matching passes if woken by a notification or the poll timer,
 *	 3. expires intents whose time is up (poll timer only),
 *	 4. claims pending matches and outbox rows, as many as free request
 *		slots allow, and starts their requests.
 *
 * Every step is its own short transaction, and no transaction is open
 * while a request is in flight.  A claim takes a lease on the row (it
 * moves next_attempt_at past the longest a request can take), so a worker
 * that dies mid-request leaves rows that any worker picks up again once
 * the lease runs out.  Matching, claims and outcomes lock rows with
 * FOR UPDATE SKIP LOCKED or update them only from the status they were
 * claimed in, so two workers never act on the same row twice.
 *
 * An error inside one of these transactions is caught, logged and rolled
 * back; the loop goes on.  When recording a batch of outcomes fails, each
 * outcome is retried alone, and one that still fails marks its row failed
 * with the error, so that a single bad row cannot stop the others.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "matchmaker.h"

#define LISTEN_CHANNEL		"matchmaker"
#define LISTEN_RETRY_MS		5000
#define WARNING_INTERVAL_MS 10000

MemoryContext mm_job_context = NULL;

static MemoryContext loop_context = NULL;

/* what the worker was started with */
static char *served_database = NULL;
static char *served_room_url = NULL;
static int	served_room_provider = -1;
static char *served_push_settings = NULL;
static int	served_push_provider = -1;
static char *superuser_name = NULL;

/* LISTEN connection to our own server */
static PGconn *listener = NULL;
static TimestampTz listener_retry_at = 0;
static int	listener_marker;	/* address tags the socket's wait event */

static bool extension_ready = false;

/*
 * 0 in the worker, and 1 up to matchmaker.senders in a sender.  A sender
 * only claims due rooms and pushes, sends their requests and records the
 * outcomes.  The worker also listens, matches, expires and closes rooms.
 */
static int	sender_number = 0;

/* finished jobs waiting to be recorded */
static MMRoomJob *rooms_done = NULL;
static MMPushJob *pushes_done = NULL;
static MMCloseJob *closes_done = NULL;

/* matches whose room is being destroyed right now */
static int64 *closing = NULL;
static int	nclosing = 0;
static int	jobs_inflight = 0;

/*
 * Most requests in flight the open file limit leaves room for.  Each uses
 * a socket, and libcurl may keep as many idle ones for reuse, besides the
 * files PostgreSQL itself keeps open (up to max_files_per_process, 1000 by
 * default).  Set by raise_open_file_limit().
 */
static int	inflight_fd_cap = 128;

/*
 * Return matchmaker.max_inflight, lowered to what the open file limit
 * allows.
 */
static int
max_inflight(void)
{
	return Min(mm_max_inflight, inflight_fd_cap);
}

/* work that may be waiting beyond what the last claim took */
static bool want_match = true;
static bool want_rooms = true;

/*
 * Set while matches wait for a request slot.  Matching then pauses: new
 * matches would only queue behind them, and the time is better spent on
 * the requests that finish older ones.
 */
static bool rooms_backlog = false;
static bool want_pushes = true;
static bool want_closes = true;

/* the error of the last failed transaction, for the row it concerns */
static char *last_txn_error = NULL;
static int	last_txn_errcode = 0;

/* the extension the current claims belong to; see record_outcomes() */
static Oid	claim_extension = InvalidOid;

/*
 * Jobs leased by the running transaction, and jobs whose leases have
 * committed and that wait for start_jobs().  A transaction that fails
 * drops its jobs: their rows are as they were before it.
 */
static MMRoomJob *txn_rooms = NULL;
static MMPushJob *txn_pushes = NULL;
static int	txn_jobs = 0;
static MMRoomJob *ready_rooms = NULL;
static MMPushJob *ready_pushes = NULL;
static int	ready_jobs = 0;

/* Return the request slots that no job in flight or about to start holds. */
static int
free_slots(void)
{
	return max_inflight() - jobs_inflight - ready_jobs - txn_jobs;
}

static void
free_room_jobs(MMRoomJob *jobs)
{
	while (jobs)
	{
		MMRoomJob  *next = jobs->next;

		if (jobs->plan)
			json_decref(jobs->plan);
		for (int i = 0; i < 2; i++)
			if (jobs->extras[i])
				json_decref(jobs->extras[i]);
		MemoryContextDelete(jobs->cxt);
		jobs = next;
	}
}

static void
free_push_jobs(MMPushJob *jobs)
{
	while (jobs)
	{
		MMPushJob  *next = jobs->next;

		MemoryContextDelete(jobs->cxt);
		jobs = next;
	}
}

/*
 * At the end of a transaction, move the jobs it leased to the jobs ready
 * to start if it committed, or drop them.
 */
static void
end_txn_jobs(bool committed)
{
	if (!committed)
	{
		free_room_jobs(txn_rooms);
		free_push_jobs(txn_pushes);
	}
	else
	{
		while (txn_rooms)
		{
			MMRoomJob  *next = txn_rooms->next;

			txn_rooms->next = ready_rooms;
			ready_rooms = txn_rooms;
			txn_rooms = next;
		}
		while (txn_pushes)
		{
			MMPushJob  *next = txn_pushes->next;

			txn_pushes->next = ready_pushes;
			ready_pushes = txn_pushes;
			txn_pushes = next;
		}
		ready_jobs += txn_jobs;
	}
	txn_rooms = NULL;
	txn_pushes = NULL;
	txn_jobs = 0;
}

typedef void (*TxnBody) (void *arg);

static const MMRoomProvider *
room_provider_of(int kind)
{
	switch (kind)
	{
		case MM_ROOM_HTTP:
			return &mm_room_http;
		case MM_ROOM_AGORA:
			return &mm_room_agora;
		case MM_ROOM_LIVEKIT:
			return &mm_room_livekit;
		default:
			return &mm_room_janus;
	}
}

static const MMRoomProvider *
room_provider(void)
{
	return room_provider_of(mm_room_provider);
}

static const MMPushProvider *
push_provider_of(int kind)
{
	switch (kind)
	{
		case MM_PUSH_FCM:
			return &mm_push_fcm;
		case MM_PUSH_APNS:
			return &mm_push_apns;
		default:
			return &mm_push_webhook;
	}
}

static const MMPushProvider *
push_provider(void)
{
	return push_provider_of(mm_push_provider);
}

/*
 * The settings a push provider caches credentials from, as one string, so
 * that a reload which changes none of them keeps the cached tokens (APNs
 * throttles providers that renew their token too often).
 */
static char *
push_settings(void)
{
	return psprintf("%d|%s|%s|%s|%s|%s|%s|%s|%s", mm_push_provider,
					mm_fcm_project_id, mm_fcm_key_file, mm_fcm_token_url,
					mm_fcm_url, mm_apns_key_file, mm_apns_key_id,
					mm_apns_team_id, mm_apns_url);
}

/*
 * Rate-limited WARNING for a provider that keeps failing: one line per
 * WARNING_INTERVAL_MS per kind, counting what was held back.
 */
static void
warn_failing(int kind, const char *what, const char *error)
{
	static TimestampTz last[2];
	static int	held[2];
	TimestampTz now = GetCurrentTimestamp();

	if (last[kind] != 0 &&
		!TimestampDifferenceExceeds(last[kind], now, WARNING_INTERVAL_MS))
	{
		held[kind]++;
		return;
	}
	ereport(WARNING,
			(errmsg("matchmaker %s provider is failing: %s", what, error),
			 held[kind] > 0 ?
			 errdetail("%d similar failures in the last %d seconds were not logged.",
					   held[kind], WARNING_INTERVAL_MS / 1000) : 0));
	last[kind] = now;
	held[kind] = 0;
}

/*
 * Run body inside a transaction with SPI connected and a snapshot set.
 * Returns false if it raised an error; the error is logged, kept in
 * last_txn_error, and the transaction rolled back.
 */
static bool
run_transaction(const char *activity, TxnBody body, void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool ok = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, activity);
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		body(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();

		if (last_txn_error)
			pfree(last_txn_error);
		last_txn_error = MemoryContextStrdup(TopMemoryContext, edata->message);
		last_txn_errcode = edata->sqlerrcode;
		ereport(WARNING,
				(errmsg("%s could not %s: %s",
						MyBgworkerEntry->bgw_name, activity, edata->message)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	end_txn_jobs(ok);
	pgstat_report_activity(STATE_IDLE, NULL);
	pgstat_report_stat(false);
	return ok;
}

/* ---------------------------------------------------------------------
 * Prepared statements
 * ---------------------------------------------------------------------
 */
/* A statement of the worker, prepared on first use (see mm_prepare()). */
typedef struct Statement
{
	const char *sql;
	int			nargs;
	Oid			argtypes[6];
	SPIPlanPtr	plan;
} Statement;

static Statement claim_rooms_stmt = {
	"UPDATE matchmaker.matches m "
	"SET attempts = m.attempts + 1, claimed_by = pg_backend_pid(), "
	"    next_attempt_at = now() + $2 * interval '1 millisecond' "
	"FROM (SELECT id FROM matchmaker.matches "
	"      WHERE status = 'pending' AND next_attempt_at <= now() "
	"      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due "
	"WHERE m.id = due.id "
	"RETURNING m.id, m.mood, m.user_ids[1], m.user_ids[2], m.attempts, "
	"          m.plan::text",
	2, {INT4OID, INT4OID}
};

/*
 * The statements that record an outcome find their rows by primary key
 * and change them only while they are pending.  They lock the rows first
 * and test the status of each locked row, because "status = 'pending'" in
 * their own WHERE clause lets the planner pick the partial index on
 * pending rows.  After statistics taken while nothing was pending, it
 * does, and then reads every pending row to record each outcome.  The
 * updated table also gets the ids as a condition of its own, so that a
 * plan made while it was small cannot join it whole to the locked rows.
 * The lock is the one the UPDATE itself takes, which leaves foreign key
 * checks on the rows free to run.
 */
#define LOCK_ROWS(table, ids) \
	"WITH cur AS MATERIALIZED (" \
	"  SELECT id, status FROM matchmaker." table " WHERE id = " ids \
	"  FOR NO KEY UPDATE) "

static Statement save_plan_stmt = {
	LOCK_ROWS("matches", "$1")
	"UPDATE matchmaker.matches t SET plan = $2::jsonb "
	"FROM cur WHERE t.id = $1 AND t.id = cur.id AND cur.status = 'pending'",
	2, {INT8OID, TEXTOID}
};

/*
 * Every match that got its room, in one statement: the match turns ready
 * and each of its two users gets a push.  $1 is the array of match ids.
 * $2, $3 and $4 are, in the same order, the rooms, the join tokens and the
 * extra push fields (both JSON objects keyed by user id).  The intents are
 * found by primary key through the match's pair.  The first $5 pushes are
 * leased to this process for $6 ms, as a claim would lease them, and they
 * start once this commits.  The others are due at once.
 */
static Statement rooms_ready_stmt = {
	LOCK_ROWS("matches", "ANY ($1)")
	", r AS ("
	"  SELECT * FROM unnest($1, $2, $3, $4) AS r(id, room, tokens, extras)"
	"), m AS ("
	"  UPDATE matchmaker.matches t "
	"  SET status = 'ready', room = r.room, ready_at = now(), "
	"      last_error = NULL, claimed_by = NULL "
	"  FROM cur JOIN r ON r.id = cur.id "
	"  WHERE t.id = ANY ($1) AND t.id = cur.id AND cur.status = 'pending' "
	"  RETURNING t.id, t.mood, t.intent_ids, r.room, r.tokens, r.extras"
	"), p AS ("
	"  SELECT i.id AS intent_id, m.id AS match_id, i.push_token, "
	"         coalesce(m.extras::jsonb -> i.user_id, '{}') || "
	"         jsonb_build_object('type', 'match', 'intent_id', i.id, "
	"                            'match_id', m.id, 'mood', m.mood, "
	"                            'room', m.room, "
	"                            'token', m.tokens::jsonb ->> i.user_id) "
	"           AS payload, "
	"         row_number() OVER (ORDER BY i.id) AS n "
	"  FROM m JOIN matchmaker.intents i ON i.id = ANY (m.intent_ids)"
	") "
	"INSERT INTO matchmaker.outbox "
	"  (intent_id, match_id, push_token, payload, attempts, claimed_by, "
	"   next_attempt_at) "
	"SELECT intent_id, match_id, push_token, payload, "
	"       CASE WHEN n <= $5 THEN 1 ELSE 0 END, "
	"       CASE WHEN n <= $5 THEN pg_backend_pid() END, "
	"       CASE WHEN n <= $5 THEN now() + $6 * interval '1 millisecond' "
	"            ELSE now() END "
	"FROM p ORDER BY n "
	"RETURNING id, push_token, payload::text, attempts, "
	"          claimed_by IS NOT NULL",
	6, {INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4OID,
	INT4OID}
};

static Statement room_retry_stmt = {
	LOCK_ROWS("matches", "$1")
	"UPDATE matchmaker.matches t "
	"SET next_attempt_at = now() + $2 * interval '1 millisecond', "
	"    last_error = $3, claimed_by = NULL "
	"FROM cur WHERE t.id = $1 AND t.id = cur.id AND cur.status = 'pending'",
	3, {INT8OID, INT4OID, TEXTOID}
};

static Statement room_fail_stmt = {
	LOCK_ROWS("matches", "$1")
	", m AS ("
	"  UPDATE matchmaker.matches t "
	"  SET status = 'failed', last_error = $2, claimed_by = NULL "
	"  FROM cur WHERE t.id = $1 AND t.id = cur.id AND cur.status = 'pending' "
	"  RETURNING t.id"
	"), i AS ("
	"  UPDATE matchmaker.intents i SET status = 'failed' "
	"  FROM m WHERE i.match_id = m.id AND i.status = 'matched' "
	"  RETURNING i.id, i.push_token, m.id AS match_id"
	") "
	"INSERT INTO matchmaker.outbox (intent_id, match_id, push_token, payload) "
	"SELECT id, match_id, push_token, "
	"       jsonb_build_object('type', 'failed', 'intent_id', id, "
	"                          'match_id', match_id) "
	"FROM i ORDER BY id",
	2, {INT8OID, TEXTOID}
};

static Statement claim_pushes_stmt = {
	"UPDATE matchmaker.outbox o "
	"SET attempts = o.attempts + 1, claimed_by = pg_backend_pid(), "
	"    next_attempt_at = now() + $2 * interval '1 millisecond' "
	"FROM (SELECT id FROM matchmaker.outbox "
	"      WHERE status = 'pending' AND next_attempt_at <= now() "
	"      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due "
	"WHERE o.id = due.id "
	"RETURNING o.id, o.push_token, o.payload::text, o.attempts",
	2, {INT4OID, INT4OID}
};

static Statement push_sent_stmt = {
	LOCK_ROWS("outbox", "ANY ($1)")
	"UPDATE matchmaker.outbox t "
	"SET status = 'sent', sent_at = now(), last_error = NULL, claimed_by = NULL "
	"FROM cur WHERE t.id = ANY ($1) AND t.id = cur.id AND cur.status = 'pending'",
	1, {INT8ARRAYOID}
};

static Statement push_retry_stmt = {
	LOCK_ROWS("outbox", "$1")
	"UPDATE matchmaker.outbox t "
	"SET next_attempt_at = now() + $2 * interval '1 millisecond', "
	"    last_error = $3, claimed_by = NULL "
	"FROM cur WHERE t.id = $1 AND t.id = cur.id AND cur.status = 'pending'",
	3, {INT8OID, INT4OID, TEXTOID}
};

static Statement dead_token_stmt = {
	"INSERT INTO matchmaker.dead_push_tokens (push_token, provider, reason) "
	"VALUES ($1, $2, $3) "
	"ON CONFLICT (push_token) DO UPDATE "
	"SET provider = excluded.provider, reason = excluded.reason, "
	"    created_at = now()",
	3, {TEXTOID, TEXTOID, TEXTOID}
};

static Statement push_fail_stmt = {
	LOCK_ROWS("outbox", "$1")
	"UPDATE matchmaker.outbox t "
	"SET status = 'failed', last_error = $2, claimed_by = NULL "
	"FROM cur WHERE t.id = $1 AND t.id = cur.id AND cur.status = 'pending'",
	2, {INT8OID, TEXTOID}
};

static int
execute(Statement *st, Datum *args, int expect)
{
	int			ret;

	mm_prepare(&st->plan, st->sql, st->nargs, st->argtypes);
	ret = SPI_execute_plan(st->plan, args, NULL, false, 0);
	if (ret != expect)
		elog(ERROR, "statement failed: %s", SPI_result_code_string(ret));
	return (int) SPI_processed;
}

/* ---------------------------------------------------------------------
 * Delays
 * ---------------------------------------------------------------------
 */

/*
 * Delay before attempt number attempts + 1: exponential from retry_base,
 * capped at retry_max, with "equal jitter" (half fixed, half random) so
 * that a burst of failures does not come back as a burst.  Never shorter
 * than the delay Retry-After requested.
 */
static int
retry_delay_ms(int attempts, int retry_after_ms)
{
	double		delay = mm_retry_base;
	uint32		r;

	for (int i = 1; i < attempts && delay < mm_retry_max; i++)
		delay *= 2;
	delay = Min(delay, (double) mm_retry_max);
	if (!pg_strong_random(&r, sizeof(r)))
		r = 0;
	delay = delay / 2 + (delay / 2) * ((double) r / (double) PG_UINT32_MAX);
	if (retry_after_ms >= 0 && delay < retry_after_ms)
		delay = retry_after_ms;
	return (int) delay;
}

/* Lease length of a claim: longer than any request can take. */
static int
lease_ms(void)
{
	/* Janus may need a session, a handle and the room: three requests */
	return 3 * mm_request_timeout + mm_connect_timeout + 1000;
}

/* ---------------------------------------------------------------------
 * Leased jobs
 * ---------------------------------------------------------------------
 */
#define new_job_context(name) \
	AllocSetContextCreate(mm_job_context, name, ALLOCSET_SMALL_SIZES)

/*
 * Add the job of a match leased to this process, from a row that starts
 * with the match's id, mood, two user ids and attempts.  plan_column is
 * the column of its saved plan, or 0 for a new match.  The provider may
 * choose a plan now, which is saved before any request.
 */
static void
add_room_job(HeapTuple tup, TupleDesc desc, int plan_column)
{
	const MMRoomProvider *provider = room_provider();
	MemoryContext cxt = new_job_context("matchmaker room job");
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	MMRoomJob  *job = palloc0(sizeof(MMRoomJob));
	bool		isnull;
	char	   *plan = plan_column > 0 ? SPI_getvalue(tup, desc, plan_column) : NULL;

	job->cxt = cxt;
	job->extension = claim_extension;
	job->match_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	job->mood = SPI_getvalue(tup, desc, 2);
	job->users[0] = SPI_getvalue(tup, desc, 3);
	job->users[1] = SPI_getvalue(tup, desc, 4);
	job->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	if (plan != NULL)
		job->plan = json_loads(plan, 0, NULL);
	job->outcome.retry_after_ms = -1;
	job->next = txn_rooms;
	txn_rooms = job;
	txn_jobs++;

	if (provider->make_plan)
		provider->make_plan(job);
	if (job->plan_is_new)
	{
		Datum		pargs[2];

		pargs[0] = Int64GetDatum(job->match_id);
		pargs[1] = CStringGetTextDatum(mm_json_dump(json_incref(job->plan)));
		execute(&save_plan_stmt, pargs, SPI_OK_UPDATE);
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Add the job of a push leased to this process, from a row of outbox id,
 * push token, payload and attempts.
 */
static void
add_push_job(HeapTuple tup, TupleDesc desc)
{
	MemoryContext cxt = new_job_context("matchmaker push job");
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	MMPushJob  *job = palloc0(sizeof(MMPushJob));
	bool		isnull;

	job->cxt = cxt;
	job->extension = claim_extension;
	job->outbox_id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	job->push_token = SPI_getvalue(tup, desc, 2);
	job->payload = SPI_getvalue(tup, desc, 3);
	job->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	job->outcome.retry_after_ms = -1;
	job->next = txn_pushes;
	txn_pushes = job;
	txn_jobs++;
	MemoryContextSwitchTo(oldcxt);
}

/* ---------------------------------------------------------------------
 * Outcomes
 * ---------------------------------------------------------------------
 */
void
mm_room_done(MMRoomJob *job)
{
	/* the error is logged and stored: keep secrets out of it */
	job->outcome.error = mm_redact_secrets(job->cxt, job->outcome.error);
	job->next = rooms_done;
	rooms_done = job;
}

void
mm_close_done(MMCloseJob *job)
{
	/* the error is logged and stored: keep secrets out of it */
	job->outcome.error = mm_redact_secrets(job->cxt, job->outcome.error);
	job->next = closes_done;
	closes_done = job;
}

void
mm_push_done(MMPushJob *job)
{
	/* the error is logged and stored: keep secrets out of it */
	job->outcome.error = mm_redact_secrets(job->cxt, job->outcome.error);
	job->next = pushes_done;
	pushes_done = job;
}

/*
 * Turn a retry the peer wants to delay beyond matchmaker.retry_max into a
 * failure: waiting that long would leave users in limbo, and retrying
 * sooner would ignore Retry-After.
 */
static void
limit_retry_after(MMOutcome *out)
{
	if (out->result == MM_RETRY && out->retry_after_ms > mm_retry_max)
	{
		out->error = psprintf("provider asked to retry after %d s, longer than matchmaker.retry_max: %s",
							  out->retry_after_ms / 1000,
							  out->error ? out->error : "no error given");
		out->result = MM_FAIL;
	}
}

/*
 * Return the error text a failed row keeps.  After the last attempt it
 * includes the number of attempts.
 */
static const char *
final_error(const MMOutcome *out, int attempts)
{
	if (out->result == MM_RETRY)
		return psprintf("gave up after %d attempts: %s", attempts,
						out->error ? out->error : "no response");
	return out->error ? out->error : "failed";
}

/* Record the rooms of n jobs that got one, in one statement. */
static void
record_rooms_ready(MMRoomJob **jobs, int n)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *rooms = palloc(sizeof(Datum) * n);
	Datum	   *tokens = palloc(sizeof(Datum) * n);
	Datum	   *extras = palloc(sizeof(Datum) * n);
	Datum		args[6];
	SPITupleTable *tuptable;
	int			npushes;

	for (int j = 0; j < n; j++)
	{
		MMRoomJob  *job = jobs[j];

		/*
		 * Not json_object(): the server exports a function of that name,
		 * and the dynamic linker would bind the call to it.
		 */
		json_t	   *user_tokens = json_pack("{}");
		json_t	   *user_extras = json_pack("{}");

		for (int i = 0; i < 2; i++)
		{
			json_object_set_new(user_tokens, job->users[i],
								json_string(job->tokens[i]));
			if (job->extras[i])
				json_object_set(user_extras, job->users[i], job->extras[i]);
		}
		ids[j] = Int64GetDatum(job->match_id);
		rooms[j] = CStringGetTextDatum(job->room);
		tokens[j] = CStringGetTextDatum(mm_json_dump(user_tokens));
		extras[j] = CStringGetTextDatum(mm_json_dump(user_extras));
	}
	args[0] = mm_int8_array(ids, n);
	args[1] = mm_text_array(rooms, n);
	args[2] = mm_text_array(tokens, n);
	args[3] = mm_text_array(extras, n);
	args[4] = Int32GetDatum(Max(free_slots(), 0));
	args[5] = Int32GetDatum(lease_ms());
	claim_extension = get_extension_oid("matchmaker", true);
	npushes = execute(&rooms_ready_stmt, args, SPI_OK_INSERT_RETURNING);
	tuptable = SPI_tuptable;
	for (int i = 0; i < npushes; i++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tuptable->vals[i], tuptable->tupdesc,
									   5, &isnull)))
			add_push_job(tuptable->vals[i], tuptable->tupdesc);
		else
			want_pushes = true;
	}
	for (int j = 0; j < n; j++)
		elog(DEBUG1, "matchmaker: match " INT64_FORMAT " has room %s",
			 jobs[j]->match_id, jobs[j]->room);
}

static void
record_room(MMRoomJob *job)
{
	Datum		args[3];

	if (job->outcome.result == MM_STALE)
		return;
	limit_retry_after(&job->outcome);
	args[0] = Int64GetDatum(job->match_id);
	if (job->outcome.result == MM_OK)
		record_rooms_ready(&job, 1);
	else if (job->outcome.result == MM_RETRY && job->attempts < mm_max_attempts)
	{
		args[1] = Int32GetDatum(retry_delay_ms(job->attempts,
											   job->outcome.retry_after_ms));
		args[2] = CStringGetTextDatum(job->outcome.error);
		execute(&room_retry_stmt, args, SPI_OK_UPDATE);
		elog(DEBUG1, "matchmaker: room for match " INT64_FORMAT " will be retried: %s",
			 job->match_id, job->outcome.error);
	}
	else
	{
		args[1] = CStringGetTextDatum(final_error(&job->outcome, job->attempts));
		execute(&room_fail_stmt, args, SPI_OK_INSERT);
		want_pushes = true;
		elog(DEBUG1, "matchmaker: match " INT64_FORMAT " failed: %s",
			 job->match_id, job->outcome.error);
	}
}

static void
record_push(MMPushJob *job)
{
	Datum		args[3];

	if (job->outcome.result == MM_STALE)
		return;
	limit_retry_after(&job->outcome);
	args[0] = Int64GetDatum(job->outbox_id);
	if (job->outcome.result == MM_OK)
	{
		args[0] = mm_int8_array(args, 1);
		execute(&push_sent_stmt, args, SPI_OK_UPDATE);
	}
	else if (job->outcome.result == MM_RETRY && job->attempts < mm_max_attempts)
	{
		args[1] = Int32GetDatum(retry_delay_ms(job->attempts,
											   job->outcome.retry_after_ms));
		args[2] = CStringGetTextDatum(job->outcome.error);
		execute(&push_retry_stmt, args, SPI_OK_UPDATE);
	}
	else
	{
		args[1] = CStringGetTextDatum(final_error(&job->outcome, job->attempts));
		execute(&push_fail_stmt, args, SPI_OK_UPDATE);
		if (job->outcome.token_dead)
		{
			Datum		dargs[3];

			dargs[0] = CStringGetTextDatum(job->push_token);
			dargs[1] = CStringGetTextDatum(push_provider()->name);
			dargs[2] = args[1];
			execute(&dead_token_stmt, dargs, SPI_OK_INSERT);
		}
	}
}

/*
 * All finished jobs in one transaction; sent pushes in one statement.
 * Outcomes of jobs claimed from an extension that has since been dropped
 * (and maybe created again, with new rows under the same ids) are
 * dropped.
 */
static void
record_all_body(void *arg)
{
	int			nready = 0;
	int			nsent = 0;
	int			nmax = 0;
	MMRoomJob **ready;
	Datum	   *sent;
	Oid			current = get_extension_oid("matchmaker", true);

	for (MMRoomJob *job = rooms_done; job != NULL; job = job->next)
		if (job->extension != current)
			job->outcome.result = MM_STALE;
	for (MMPushJob *job = pushes_done; job != NULL; job = job->next)
		if (job->extension != current)
			job->outcome.result = MM_STALE;

	for (MMRoomJob *job = rooms_done; job != NULL; job = job->next)
		nmax++;
	ready = palloc(sizeof(MMRoomJob *) * Max(nmax, 1));
	for (MMRoomJob *job = rooms_done; job != NULL; job = job->next)
	{
		if (job->outcome.result == MM_OK)
			ready[nready++] = job;
		else
			record_room(job);
	}
	if (nready > 0)
		record_rooms_ready(ready, nready);

	nmax = 0;
	for (MMPushJob *job = pushes_done; job != NULL; job = job->next)
		nmax++;
	sent = palloc(sizeof(Datum) * Max(nmax, 1));
	for (MMPushJob *job = pushes_done; job != NULL; job = job->next)
	{
		if (job->outcome.result == MM_OK)
			sent[nsent++] = Int64GetDatum(job->outbox_id);
		else if (job->outcome.result != MM_STALE)
			record_push(job);
	}
	if (nsent > 0)
	{
		Datum		arg0 = mm_int8_array(sent, nsent);

		execute(&push_sent_stmt, &arg0, SPI_OK_UPDATE);
	}
}

static void
record_one_room_body(void *arg)
{
	record_room((MMRoomJob *) arg);
}

static void
record_one_push_body(void *arg)
{
	record_push((MMPushJob *) arg);
}

static void
record_outcomes(void)
{
	MMRoomJob  *rooms = rooms_done;
	MMPushJob  *pushes = pushes_done;

	if (rooms == NULL && pushes == NULL)
		return;

	for (MMRoomJob *job = rooms; job; job = job->next)
	{
		jobs_inflight--;
		if (job->outcome.result != MM_OK)
			warn_failing(0, room_provider()->name, job->outcome.error ?
						 job->outcome.error : "unknown error");
	}
	for (MMPushJob *job = pushes; job; job = job->next)
	{
		jobs_inflight--;
		if (job->outcome.result != MM_OK)
			warn_failing(1, push_provider()->name, job->outcome.error ?
						 job->outcome.error : "unknown error");
	}

	if (!run_transaction("record provider outcomes", record_all_body, NULL))
	{
		/*
		 * Something in the batch is bad.  Record each outcome alone; one
		 * that fails again marks its row failed with the error it raised.
		 * A row locked by someone else (lock_timeout) is left as it is: its
		 * lease runs out and it is tried again.
		 */
		for (MMRoomJob *job = rooms; job; job = job->next)
		{
			if (!run_transaction("record a room outcome",
								 record_one_room_body, job) &&
				last_txn_errcode != ERRCODE_LOCK_NOT_AVAILABLE)
			{
				job->outcome.result = MM_FAIL;
				job->outcome.error = MemoryContextStrdup(job->cxt,
														 last_txn_error);
				run_transaction("mark a match failed",
								record_one_room_body, job);
			}
		}
		for (MMPushJob *job = pushes; job; job = job->next)
		{
			if (!run_transaction("record a push outcome",
								 record_one_push_body, job) &&
				last_txn_errcode != ERRCODE_LOCK_NOT_AVAILABLE)
			{
				job->outcome.result = MM_FAIL;
				job->outcome.error = MemoryContextStrdup(job->cxt,
														 last_txn_error);
				run_transaction("mark a push failed",
								record_one_push_body, job);
			}
		}
	}

	free_room_jobs(rooms);
	free_push_jobs(pushes);
	rooms_done = NULL;
	pushes_done = NULL;
}

/* ---------------------------------------------------------------------
 * Claims
 * ---------------------------------------------------------------------
 */
typedef struct Claim
{
	int			limit;
	int			claimed;
} Claim;

/*
 * Run a claim statement: lease up to limit due rows and return how many,
 * with the rows in SPI_tuptable.  Also note which extension they belong
 * to, so that outcomes arriving after DROP EXTENSION are dropped.
 */
static uint64
claim_rows(Statement *st, int limit)
{
	Datum		args[2];

	claim_extension = get_extension_oid("matchmaker", true);
	args[0] = Int32GetDatum(limit);
	args[1] = Int32GetDatum(lease_ms());
	execute(st, args, SPI_OK_UPDATE_RETURNING);
	return SPI_processed;
}

static void
claim_rooms_body(void *arg)
{
	Claim	   *claim = (Claim *) arg;
	uint64		n = claim_rows(&claim_rooms_stmt, claim->limit);
	SPITupleTable *tuptable = SPI_tuptable;

	for (uint64 i = 0; i < n; i++)
		add_room_job(tuptable->vals[i], tuptable->tupdesc, 6);
	claim->claimed = (int) n;
}

static void
claim_pushes_body(void *arg)
{
	Claim	   *claim = (Claim *) arg;
	uint64		n = claim_rows(&claim_pushes_stmt, claim->limit);
	SPITupleTable *tuptable = SPI_tuptable;

	for (uint64 i = 0; i < n; i++)
		add_push_job(tuptable->vals[i], tuptable->tupdesc);
	claim->claimed = (int) n;
}

static void
call_room_start(void *job)
{
	room_provider()->start((MMRoomJob *) job);
}

static void
call_push_start(void *job)
{
	push_provider()->start((MMPushJob *) job);
}

/*
 * Start a claimed job's requests, in the job's memory context.  Returns
 * false, with *out filled in, when the job must end at once instead: its
 * earlier attempts all ran out their leases, or starting raised an error
 * (a damaged plan, a value the provider cannot encode).  Such a job is
 * recorded like any other outcome rather than taking the worker down.
 */
static bool
start_job(void (*start) (void *), void *job, MemoryContext cxt,
		  int *attempts, MMOutcome *out)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	volatile bool started = true;

	/*
	 * Every row this request is about, and its claim, must be on disk
	 * before the provider hears of it.  Once flushed this returns at once.
	 */
	XLogFlush(XactLastCommitEnd);

	jobs_inflight++;
	if (*attempts > mm_max_attempts)
	{
		out->result = MM_RETRY;
		out->error = pstrdup("no response within the lease");
		(*attempts)--;
		started = false;
	}
	else
	{
		PG_TRY();
		{
			start(job);
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			FlushErrorState();
			out->result = MM_FAIL;
			out->error = edata->message;
			started = false;
		}
		PG_END_TRY();
	}
	MemoryContextSwitchTo(oldcxt);
	return started;
}

static void
start_room(MMRoomJob *job)
{
	if (!start_job(call_room_start, job, job->cxt, &job->attempts,
				   &job->outcome))
		mm_room_done(job);
}

static void
start_push(MMPushJob *job)
{
	if (!start_job(call_push_start, job, job->cxt, &job->attempts,
				   &job->outcome))
		mm_push_done(job);
}

/*
 * Claim due pushes up to the free request slots.  Pushes are claimed
 * before matching and before rooms, because they finish what earlier
 * rooms began.  Each room made adds two pushes, so under load the slots
 * settle where pushes keep up with rooms, and a flood of new matches
 * cannot delay the pushes of earlier ones.
 */
static void
claim_pushes(void)
{
	Claim		claim = {0, 0};

	if (!want_pushes || (claim.limit = free_slots()) <= 0)
		return;
	if (run_transaction("claim pushes", claim_pushes_body, &claim))
		want_pushes = (claim.claimed == claim.limit);
	else
		want_pushes = false;	/* the poll timer tries again */
}

/*
 * Claim due matches up to the free request slots: those that matching
 * made beyond the free slots, retries, and leases that ran out.
 */
static void
claim_rooms(void)
{
	Claim		claim = {0, 0};

	if (want_rooms && (claim.limit = free_slots()) <= 0)
		rooms_backlog = true;
	else if (want_rooms)
	{
		if (run_transaction("claim matches", claim_rooms_body, &claim))
			want_rooms = (claim.claimed == claim.limit);
		else
			want_rooms = false;
		rooms_backlog = want_rooms;
	}
	else
		rooms_backlog = false;
}

/*
 * Start the jobs whose leases have committed, pushes first.  start_job()
 * waits for the WAL to reach disk once for all of them.
 */
static void
start_jobs(void)
{
	MMPushJob  *pushes = ready_pushes;
	MMRoomJob  *rooms = ready_rooms;

	ready_pushes = NULL;
	ready_rooms = NULL;
	ready_jobs = 0;
	for (MMPushJob *job = pushes, *next; job; job = next)
	{
		next = job->next;
		job->next = NULL;
		start_push(job);
	}
	for (MMRoomJob *job = rooms, *next; job; job = next)
	{
		next = job->next;
		job->next = NULL;
		start_room(job);
	}
}

/* ---------------------------------------------------------------------
 * Closing rooms
 * ---------------------------------------------------------------------
 */
static Statement close_due_stmt = {
	"SELECT id, plan::text FROM matchmaker.matches "
	"WHERE plan IS NOT NULL AND room_closed_at IS NULL "
	"  AND ((status = 'ready' AND (ended_at IS NOT NULL "
	"        OR ready_at < now() - $2 * interval '1 second')) "
	"       OR status = 'failed') "
	"  AND NOT (id = ANY ($3)) "
	"ORDER BY id LIMIT $1",
	3, {INT4OID, INT4OID, INT8ARRAYOID}
};

static Statement closed_stmt = {
	"UPDATE matchmaker.matches SET room_closed_at = now() WHERE id = ANY ($1)",
	1, {INT8ARRAYOID}
};

typedef struct CloseClaim
{
	int			limit;
	int			claimed;
	MMCloseJob *jobs;
} CloseClaim;

static Datum
int8_array_datum(int64 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(values[i]);
	return mm_int8_array(elems, n);
}

static void
close_due_body(void *arg)
{
	CloseClaim *claim = (CloseClaim *) arg;
	Datum		args[3];
	SPITupleTable *tuptable;
	uint64		n;

	claim_extension = get_extension_oid("matchmaker", true);
	args[0] = Int32GetDatum(claim->limit);
	args[1] = Int32GetDatum(mm_room_lifetime);
	args[2] = int8_array_datum(closing, nclosing);
	execute(&close_due_stmt, args, SPI_OK_SELECT);
	n = SPI_processed;
	tuptable = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		MemoryContext cxt = new_job_context("matchmaker close job");
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
		MMCloseJob *job = palloc0(sizeof(MMCloseJob));
		bool		isnull;

		job->cxt = cxt;
		job->extension = claim_extension;
		job->match_id = DatumGetInt64(SPI_getbinval(tuptable->vals[i],
													tuptable->tupdesc, 1,
													&isnull));
		job->plan = json_loads(SPI_getvalue(tuptable->vals[i],
											tuptable->tupdesc, 2), 0, NULL);
		job->outcome.retry_after_ms = -1;
		MemoryContextSwitchTo(oldcxt);
		job->next = claim->jobs;
		claim->jobs = job;
		claim->claimed++;
	}
}

/*
 * Destroy rooms whose call ended or whose lifetime ran out, and rooms of
 * failed matches, for providers whose rooms need it.  Runs on the poll
 * timer, and again while a pass finds a full batch; a close that fails is
 * tried again on a later pass.  Half the free request slots at most go to
 * closes, so that new rooms and pushes go first.
 */
static void
run_closing(void)
{
	const MMRoomProvider *provider = room_provider();
	CloseClaim	claim = {0};
	int			free_slots = max_inflight() - jobs_inflight;

	want_closes = false;
	if (provider->close == NULL || free_slots <= 0)
		return;
	if (closing == NULL)
		closing = MemoryContextAlloc(TopMemoryContext,
									 sizeof(int64) * 1000);
	claim.limit = Min(Max(1, free_slots / 2), 1000 - nclosing);
	if (claim.limit <= 0 ||
		!run_transaction("find rooms to destroy", close_due_body, &claim))
		return;
	want_closes = (claim.claimed == claim.limit);

	/* as in start_job(): what the closes rest on must be on disk first */
	XLogFlush(XactLastCommitEnd);

	for (MMCloseJob *job = claim.jobs, *next; job; job = next)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);

		next = job->next;
		job->next = NULL;
		closing[nclosing++] = job->match_id;
		jobs_inflight++;
		if (job->plan == NULL)
		{
			job->outcome.result = MM_FAIL;
			job->outcome.error = pstrdup("matches.plan is not valid JSON");
			mm_close_done(job);
		}
		else
			provider->close(job);
		MemoryContextSwitchTo(oldcxt);
	}
}

static void
record_closes_body(void *arg)
{
	int64	   *done = (int64 *) arg;
	int			n = 0;
	Oid			current = get_extension_oid("matchmaker", true);

	for (MMCloseJob *job = closes_done; job; job = job->next)
		if (job->outcome.result != MM_RETRY && job->extension == current)
			done[n++] = job->match_id;
	if (n > 0)
	{
		Datum		a = int8_array_datum(done, n);

		execute(&closed_stmt, &a, SPI_OK_UPDATE);
	}
}

/*
 * Record finished closes: a destroyed room, or one that cannot be
 * destroyed, is marked closed; a close to retry stays due.
 */
static void
record_closes(void)
{
	int64	   *done;
	int			n = 0;

	if (closes_done == NULL)
		return;
	for (MMCloseJob *job = closes_done; job; job = job->next)
	{
		n++;
		jobs_inflight--;
		if (job->outcome.result == MM_FAIL)
			ereport(WARNING,
					(errmsg("matchmaker could not destroy the room of match " INT64_FORMAT ": %s",
							job->match_id, job->outcome.error)));
		else if (job->outcome.result == MM_RETRY)
		{
			/* wait for the next poll rather than spin on a failing Janus */
			want_closes = false;
			warn_failing(0, room_provider()->name, job->outcome.error ?
						 job->outcome.error : "unknown error");
		}
		/* drop it from the in-flight list */
		for (int i = 0; i < nclosing; i++)
			if (closing[i] == job->match_id)
			{
				closing[i] = closing[--nclosing];
				break;
			}
	}
	done = palloc(sizeof(int64) * n);
	run_transaction("record destroyed rooms", record_closes_body, done);
	while (closes_done)
	{
		MMCloseJob *next = closes_done->next;

		if (closes_done->plan)
			json_decref(closes_done->plan);
		MemoryContextDelete(closes_done->cxt);
		closes_done = next;
	}
}

/* ---------------------------------------------------------------------
 * Matching and expiry
 * ---------------------------------------------------------------------
 */
typedef struct PassResult
{
	int			made;
	int			due;			/* made but not leased: left to claims */
	bool		more;
} PassResult;

/*
 * Match, leasing as many new matches as there are free request slots, so
 * that their rooms are asked for as soon as the pass commits.
 */
static void
match_body(void *arg)
{
	PassResult *res = (PassResult *) arg;
	SPITupleTable *tuptable;

	claim_extension = get_extension_oid("matchmaker", true);
	res->made = mm_match_pass(mm_batch_size, &res->more,
							  Max(free_slots(), 0), lease_ms());
	if (res->made == 0)
		return;
	tuptable = SPI_tuptable;
	for (int i = 0; i < res->made; i++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(tuptable->vals[i], tuptable->tupdesc,
									   6, &isnull)))
			add_room_job(tuptable->vals[i], tuptable->tupdesc, 0);
		else
			res->due++;
	}
}

static void
expire_body(void *arg)
{
	int		   *expired = (int *) arg;
	bool		isnull;

	if (SPI_execute("SELECT matchmaker.expire_pass()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "expire_pass failed");
	*expired = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1,
										   &isnull));
}

/*
 * Run one matching pass.  The main loop runs the next one, if more may be
 * waiting, only after it has served the sockets, so that a backlog of
 * intents cannot hold up requests in flight.
 */
static void
run_matching(void)
{
	PassResult	res = {0, 0, false};

	if (!run_transaction("match intents", match_body, &res))
	{
		want_match = false;
		return;
	}
	if (res.due > 0)
		want_rooms = true;

	/*
	 * A mood that filled its share and made pairs may have more waiting.
	 * A pass that made none (its rows' partners are locked elsewhere)
	 * waits for the next wake-up instead of spinning.
	 */
	want_match = (res.more && res.made > 0);
}

static void
run_expiry(void)
{
	int			expired = 0;

	if (run_transaction("expire intents", expire_body, &expired) && expired > 0)
	{
		want_pushes = true;
		elog(DEBUG1, "matchmaker: %d intents expired", expired);
	}
}

/*
 * Take back the leases of workers that are gone (killed, crashed, or
 * restarted for new settings), so that their rows are retried now rather
 * than when the lease runs out.  A lease held by a live process stays.
 */
static void
release_leases_body(void *arg)
{
	static const char *const tables[] = {"matches", "outbox"};

	for (int i = 0; i < lengthof(tables); i++)
	{
		char	   *sql;
		int			ret;

		sql = psprintf("UPDATE matchmaker.%s SET next_attempt_at = now(), "
					   "claimed_by = NULL "
					   "WHERE status = 'pending' AND claimed_by IS NOT NULL "
					   "AND claimed_by NOT IN "
					   "(SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)",
					   tables[i]);
		ret = SPI_execute(sql, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "releasing leases failed: %s",
				 SPI_result_code_string(ret));
		if (SPI_processed > 0)
			ereport(LOG,
					(errmsg("matchmaker worker took back " UINT64_FORMAT
							" rows of matchmaker.%s from a worker that is gone",
							SPI_processed, tables[i])));
	}
}

static void
check_extension_body(void *arg)
{
	bool		was_ready = extension_ready;

	extension_ready = OidIsValid(get_extension_oid("matchmaker", true));
	if (extension_ready && !was_ready)
		release_leases_body(NULL);
}

/* ---------------------------------------------------------------------
 * LISTEN connection
 * ---------------------------------------------------------------------
 */

/*
 * Connect to our own server over its first Unix socket directory (or
 * localhost if it has none) as the bootstrap superuser, the role that the
 * server's OS user maps to under peer authentication.
 */
static void
listener_connect(void)
{
	const char *keys[7];
	const char *vals[7];
	char		port[16];
	char	   *host;
	char	   *dirs;
	char	   *comma;
	TimestampTz now = GetCurrentTimestamp();
	PGresult   *res;

	if (listener != NULL || now < listener_retry_at)
		return;
	listener_retry_at = TimestampTzPlusMilliseconds(now, LISTEN_RETRY_MS);

	dirs = pstrdup(GetConfigOption("unix_socket_directories", false, false));
	comma = strchr(dirs, ',');
	if (comma)
		*comma = '\0';
	host = dirs;
	while (*host == ' ')
		host++;
	if (*host == '\0')
		host = "localhost";
	snprintf(port, sizeof(port), "%d", PostPortNumber);

	keys[0] = "host";
	vals[0] = host;
	keys[1] = "port";
	vals[1] = port;
	keys[2] = "dbname";
	vals[2] = served_database;
	keys[3] = "user";
	vals[3] = superuser_name;
	keys[4] = "application_name";
	vals[4] = "matchmaker listener";
	keys[5] = "connect_timeout";
	vals[5] = "5";
	keys[6] = NULL;
	vals[6] = NULL;

	listener = PQconnectdbParams(keys, vals, 0);
	if (PQstatus(listener) != CONNECTION_OK)
	{
		ereport(WARNING,
				(errmsg("matchmaker worker could not connect to its own server to LISTEN: %s",
						PQerrorMessage(listener)),
				 errdetail("New intents are picked up by polling every %d ms until this works.",
						   mm_poll_interval)));
		PQfinish(listener);
		listener = NULL;
		return;
	}

	res = PQexec(listener, "LISTEN " LISTEN_CHANNEL);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		ereport(WARNING,
				(errmsg("matchmaker worker could not LISTEN: %s",
						PQerrorMessage(listener))));
		PQclear(res);
		PQfinish(listener);
		listener = NULL;
		return;
	}
	PQclear(res);
	PQsetnonblocking(listener, 1);
	ereport(LOG,
			(errmsg("matchmaker worker is listening on channel \"%s\"",
					LISTEN_CHANNEL)));
	/* anything that came before the LISTEN is found by scanning */
	want_match = true;
}

/* Read what the listener received.  Returns true if woken. */
static bool
listener_drain(void)
{
	PGnotify   *n;
	bool		woken = false;

	if (!PQconsumeInput(listener))
	{
		ereport(WARNING,
				(errmsg("matchmaker worker lost its LISTEN connection: %s",
						PQerrorMessage(listener))));
		PQfinish(listener);
		listener = NULL;
		return true;
	}
	while ((n = PQnotifies(listener)) != NULL)
	{
		woken = true;
		PQfreemem(n);
	}
	return woken;
}

static void
listener_close(int code, Datum arg)
{
	if (listener)
		PQfinish(listener);
	listener = NULL;
}

/*
 * Return the shared slot that contains this process's pgprocno.  Inserting
 * backends read it to wake the worker, and the worker to wake a sender.
 */
static pg_atomic_uint32 *
procno_slot(void)
{
	if (sender_number == 0)
		return &mm_shared->worker_procno;
	return &mm_shared->sender_procno[sender_number - 1];
}

/* Stop other processes from setting this process's latch. */
static void
unregister_worker(int code, Datum arg)
{
	if (mm_shared)
		pg_atomic_write_u32(procno_slot(), 0);
}

/*
 * Wake every sender.  The worker calls this when more requests are due
 * than its own free slots take.
 */
static void
wake_senders(void)
{
	for (int i = 0; mm_shared && i < mm_senders; i++)
	{
		uint32		procno = pg_atomic_read_u32(&mm_shared->sender_procno[i]);

		if (procno != 0)
			SetLatch(&ProcGlobal->allProcs[procno - 1].procLatch);
	}
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */
static void
startup_body(void *arg)
{
	superuser_name = MemoryContextStrdup(TopMemoryContext,
										 GetUserNameFromId(BOOTSTRAP_SUPERUSERID,
														   false));
	check_extension_body(NULL);
}

/* when the poll timer fires next */
static TimestampTz next_poll = 0;

static void
reload_settings(void)
{
	TimestampTz poll_by;

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);

	/* a shorter poll_interval applies now, not when the old one runs out */
	poll_by = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										  mm_poll_interval);
	if (next_poll > poll_by)
		next_poll = poll_by;

	if (strcmp(mm_database, served_database) != 0)
	{
		ereport(LOG,
				(errmsg("%s restarting to serve database \"%s\"",
						MyBgworkerEntry->bgw_name, mm_database)));
		proc_exit(1);
	}
	if (served_room_provider != mm_room_provider ||
		strcmp(served_room_url, mm_room_url) != 0)
	{
		/* the old provider drops its sessions, and queued jobs retry */
		const MMRoomProvider *old = room_provider_of(served_room_provider);

		if (old->reset)
			old->reset();
		served_room_provider = mm_room_provider;
		pfree(served_room_url);
		served_room_url = MemoryContextStrdup(TopMemoryContext, mm_room_url);
	}

	{
		char	   *now = push_settings();

		if (strcmp(now, served_push_settings) != 0)
		{
			const MMPushProvider *old = push_provider_of(served_push_provider);

			if (old->reset)
				old->reset();
			served_push_provider = mm_push_provider;
			pfree(served_push_settings);
			served_push_settings = MemoryContextStrdup(TopMemoryContext, now);
		}
		pfree(now);
	}
}

/*
 * Milliseconds the loop may sleep: until the poll timer, libcurl's timer,
 * or not at all when a pass left work behind.
 */
static long
sleep_ms(void)
{
	long		ms;
	long		curl_ms = mm_http_timeout_ms();
	TimestampTz now = GetCurrentTimestamp();
	bool		slots_free = jobs_inflight < max_inflight();

	if (rooms_done || pushes_done || closes_done ||
		(extension_ready &&
		 ((want_match && !rooms_backlog) ||
		  (slots_free && (want_rooms || want_pushes || want_closes)))))
		return 0;
	ms = (now >= next_poll) ? 0 : (long) ((next_poll - now + 999) / 1000);
	if (curl_ms >= 0 && curl_ms < ms)
		ms = curl_ms;
	return ms;
}

/*
 * Raise this process's soft limit on open files to the hard limit.  Every
 * request in flight, and every idle connection libcurl keeps for reuse,
 * is a socket.  With a soft limit of 1024, a few hundred requests to two
 * providers next to PostgreSQL's own files ran out of descriptors.
 * PostgreSQL sized its file cache from the limit it started with, so the
 * extra room goes to the sockets.
 */
static void
raise_open_file_limit(void)
{
	struct rlimit lim;

	if (getrlimit(RLIMIT_NOFILE, &lim) != 0)
		return;
	if (lim.rlim_cur < lim.rlim_max)
	{
		struct rlimit raised = lim;

		raised.rlim_cur = raised.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
			lim = raised;
		else
			ereport(LOG,
					(errmsg("matchmaker worker could not raise its open file limit: %m")));
	}
	if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur > 1024 + 2 * 4096)
		inflight_fd_cap = 4096;
	else if (lim.rlim_cur > 1024 + 2 * 128)
		inflight_fd_cap = (int) ((lim.rlim_cur - 1024) / 2);
	if (mm_max_inflight > inflight_fd_cap)
		ereport(LOG,
				(errmsg("matchmaker worker keeps at most %d requests in flight, fewer than matchmaker.max_inflight",
						inflight_fd_cap),
				 errdetail("The open file limit of the worker is %lu.",
						   (unsigned long) lim.rlim_cur)));
}

void
matchmaker_worker_main(Datum main_arg)
{

	sender_number = DatumGetInt32(main_arg);
	if (sender_number > 0)
	{
		/* a sender waits to be woken, or for its poll */
		want_match = want_rooms = want_pushes = want_closes = false;
	}

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	raise_open_file_limit();

	BackgroundWorkerInitializeConnection(mm_database, NULL, 0);

	/*
	 * An app transaction that holds a row lock must not stall the worker:
	 * its statements give up after a second, and the row is retried.
	 */
	SetConfigOption("lock_timeout", "1000", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker commits many short transactions; waiting for each to
	 * reach disk would cap it at the disk's flush rate.  Its commits are
	 * asynchronous, and start_job() flushes the WAL before any request
	 * leaves, so no provider receives a row that a crash could undo.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every claim reads the head of a queue in index order with a LIMIT.
	 * With the queue growing faster than its statistics, the planner
	 * takes it for a few rows and prefers a bitmap scan that reads and
	 * sorts the whole backlog on every claim.  Likewise, a statement that
	 * finds rows by primary key keeps the plan made on its first run.  On
	 * new, small tables that plan is a sequential scan, which later reads
	 * a whole table at every call.  Every statement of the worker has an
	 * index to use.
	 */
	SetConfigOption("enable_bitmapscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * With those two off, each statement has one good plan whatever the
	 * statistics show, so each keeps a generic plan.  Planning them again at
	 * every run took a third of the worker's time at 1,000 intents per
	 * second, more than running them.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_SUSET,
					PGC_S_OVERRIDE);

	/*
	 * The worker's statements are short, and the matching query's disabled
	 * sort puts its cost past JIT's thresholds: compiling it took longer
	 * than running it.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	served_database = MemoryContextStrdup(TopMemoryContext, mm_database);
	served_room_url = MemoryContextStrdup(TopMemoryContext, mm_room_url);
	served_room_provider = mm_room_provider;
	served_push_provider = mm_push_provider;
	served_push_settings = MemoryContextStrdup(TopMemoryContext, push_settings());
	mm_job_context = AllocSetContextCreate(TopMemoryContext,
										   "matchmaker jobs",
										   ALLOCSET_DEFAULT_SIZES);
	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "matchmaker loop",
										 ALLOCSET_DEFAULT_SIZES);
	mm_http_init();
	on_proc_exit(listener_close, (Datum) 0);
	if (mm_shared)
	{
		if (sender_number == 0)
			pg_atomic_write_u32(&mm_shared->worker_database, MyDatabaseId);
		pg_atomic_write_u32(procno_slot(), MyProc->pgprocno + 1);
		on_shmem_exit(unregister_worker, (Datum) 0);
	}

	if (!run_transaction("start up", startup_body, NULL))
		proc_exit(1);

	ereport(LOG,
			(errmsg("%s started for database \"%s\"",
					MyBgworkerEntry->bgw_name, served_database),
			 extension_ready ? 0 :
			 errhint("Run CREATE EXTENSION matchmaker in that database.")));

	for (;;)
	{
		WaitEventSet *set;
		WaitEvent	events[64];
		int			nfired;
		bool		poll_due;
		TimestampTz now;

		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_settings();

		if (sender_number == 0)
			listener_connect();

		set = CreateWaitEventSet(loop_context, 3 + mm_http_socket_count());
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		if (listener)
			AddWaitEventToSet(set, WL_SOCKET_READABLE, PQsocket(listener),
							  NULL, &listener_marker);
		mm_http_wait_setup(set);

		nfired = WaitEventSetWait(set, sleep_ms(), events,
								  lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nfired; i++)
		{
			if (events[i].events & WL_LATCH_SET)
			{
				/*
				 * Inserting transactions set the worker's latch when they
				 * commit, and the worker sets the senders' latches.
				 */
				ResetLatch(MyLatch);
				if (sender_number == 0)
					want_match = true;
				else
					want_rooms = want_pushes = true;
			}
			else if (events[i].user_data == &listener_marker)
			{
				if (listener_drain())
					want_match = true;
			}
			else if (events[i].user_data != NULL)
				mm_http_socket_ready();
		}
		FreeWaitEventSet(set);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_settings();

		now = GetCurrentTimestamp();
		poll_due = (now >= next_poll);
		if (poll_due)
			next_poll = TimestampTzPlusMilliseconds(now, mm_poll_interval);

		mm_http_perform();
		record_outcomes();
		record_closes();

		if (!extension_ready)
		{
			if (poll_due)
				run_transaction("look for the extension",
								check_extension_body, NULL);
			if (!extension_ready)
			{
				/* nothing must be in flight without the tables */
				continue;
			}
			ereport(LOG,
					(errmsg("matchmaker extension found in database \"%s\"",
							served_database)));
		}

		if (poll_due)
		{
			want_rooms = want_pushes = true;
			if (sender_number == 0)
			{
				want_match = want_closes = true;
				run_expiry();
			}
			if (room_provider()->tick)
				room_provider()->tick();
		}
		claim_pushes();
		if (want_match && !rooms_backlog)
			run_matching();
		claim_rooms();
		start_jobs();
		if (sender_number == 0 && mm_senders > 0 && (want_rooms || want_pushes))
			wake_senders();
		if (want_closes)
			run_closing();

		/* a failed transaction may mean the extension went away */
		if (last_txn_error && poll_due)
		{
			run_transaction("look for the extension",
							check_extension_body, NULL);
			pfree(last_txn_error);
			last_txn_error = NULL;
		}

		/* start what was just added without waiting for a socket */
		mm_http_perform();
	}
}
