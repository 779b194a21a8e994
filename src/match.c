/*-------------------------------------------------------------------------
 *
 * match.c
 *	  One matching pass: pair waiting intents of the same mood.
 *
 * The pass locks up to batch_size waiting intents of each mood with FOR
 * UPDATE SKIP LOCKED, oldest first, and pairs neighbours within each mood,
 * so the oldest waiter of a mood always goes first.  Rows another
 * transaction has locked (a concurrent matcher, or an app cancelling its
 * intent) are skipped, never waited for and never paired twice.  All
 * pairs of a pass are written with one statement.
 *
 * The caller owns the transaction: the worker runs one pass per short
 * transaction, and matchmaker.match_pass() runs one inside the caller's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/guc.h"
/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include "matchmaker.h"

PG_FUNCTION_INFO_V1(matchmaker_match_pass);

static SPIPlanPtr select_plan = NULL;
static SPIPlanPtr pair_plan = NULL;

/*
 * Each mood is read on its own, oldest first, straight from the partial
 * index on (mood, id): no sort, and no scan over other moods' waiters.
 * A mood with a single waiter returns one row, which the loop below
 * leaves waiting, so lone waiters never crowd pairs out of a batch.  The
 * outer ORDER BY only makes the grouping by mood explicit.
 *
 * Statistics taken while nothing waited make every partial index on
 * waiting intents look empty.  The planner may then read another of them
 * whole and sort it, which costs a scan of every waiting intent of the
 * mood at each pass.  So the query runs with sorts disabled, which leaves
 * the (mood, id) index as the only cheap plan.  For the same reason,
 * whether an intent has expired is a column and not a condition, which
 * would make the expiry index a candidate.  The loop skips expired rows,
 * and the expiry pass marks them.
 */
static const char *select_sql =
"SELECT w.id, w.user_id, w.mood, w.live "
"FROM matchmaker.moods m "
"CROSS JOIN LATERAL ("
"  SELECT i.id, i.user_id, i.mood, i.expires_at > now() AS live "
"  FROM matchmaker.intents i "
"  WHERE i.mood = m.mood AND i.status = 'waiting' "
"  ORDER BY i.id "
"  LIMIT $1 "
"  FOR UPDATE OF i SKIP LOCKED) w "
"ORDER BY w.mood, w.id";

/*
 * The intents are found through "= ANY" on each match's pair, which the
 * planner can only serve with an index scan of the primary key.  A join
 * on unnested ids let it hash the whole intents table for a few dozen
 * rows.
 *
 * The first $6 matches are leased to the calling process for $7 ms, as a
 * claim would lease them, so that the worker can ask for their rooms as
 * soon as this commits.  The others are due at once.  The statement
 * returns the matches, whether each is leased, and on every row the
 * number of intents it marked matched.
 */
static const char *pair_sql =
"WITH pairs AS ("
"  SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[],"
"                       $4::text[], $5::text[])"
"    WITH ORDINALITY AS p(mood, a, b, ua, ub, n)"
"), made AS ("
"  INSERT INTO matchmaker.matches"
"    (mood, intent_ids, user_ids, attempts, claimed_by, next_attempt_at)"
"  SELECT mood, ARRAY[a, b], ARRAY[ua, ub],"
"         CASE WHEN n <= $6 THEN 1 ELSE 0 END,"
"         CASE WHEN n <= $6 THEN pg_backend_pid() END,"
"         CASE WHEN n <= $6 THEN now() + $7 * interval '1 millisecond'"
"              ELSE now() END"
"  FROM pairs ORDER BY n"
"  RETURNING id, mood, intent_ids, user_ids, attempts,"
"            claimed_by IS NOT NULL AS leased"
"), paired AS ("
"  UPDATE matchmaker.intents i"
"  SET status = 'matched', match_id = made.id, matched_at = now()"
"  FROM made WHERE i.id = ANY (made.intent_ids)"
"  RETURNING i.id"
") "
"SELECT id, mood, user_ids[1], user_ids[2], attempts, leased,"
"       (SELECT count(*) FROM paired) "
"FROM made ORDER BY id";

/*
 * Prepare a statement once per process and keep it.  The worker runs every
 * statement with a generic plan, made at its first execution and again
 * only when a table's definition or statistics change (see the settings
 * in matchmaker_worker_main()).
 */
SPIPlanPtr
mm_prepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*plan = p;
	}
	return *plan;
}

/* One-dimensional arrays of text and of bigint values, for SPI arguments. */
Datum
mm_text_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

Datum
mm_int8_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Run one pass inside the current transaction, with SPI connected, taking
 * at most max_per_mood waiting intents of each mood.  Returns the number
 * of matches made; *more is set when some mood filled its share, so more
 * of its intents may be waiting.  The first lease_count matches are leased
 * to this process for lease_ms.  When matches were made, SPI_tuptable
 * holds them: id, mood, the two user ids, attempts, and whether leased.
 */
int
mm_match_pass(int max_per_mood, bool *more, int lease_count, int lease_ms)
{
	Oid			select_types[1] = {INT4OID};
	Oid			pair_types[7] = {TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID, INT4OID, INT4OID};
	Datum		arg;
	int			ret;
	uint64		nrows;
	Datum	   *moods,
			   *as,
			   *bs,
			   *uas,
			   *ubs;
	int			npairs = 0;
	int			prev = -1;
	int			run = 0;
	int			nestlevel;
	SPITupleTable *tuptable;

	mm_prepare(&select_plan, select_sql, 1, select_types);
	mm_prepare(&pair_plan, pair_sql, 7, pair_types);

	arg = Int32GetDatum(max_per_mood);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("enable_sort", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	ret = SPI_execute_plan(select_plan, &arg, NULL, false, 0);
	AtEOXact_GUC(true, nestlevel);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "selecting waiting intents failed: %s",
			 SPI_result_code_string(ret));

	nrows = SPI_processed;
	tuptable = SPI_tuptable;
	if (more)
		*more = false;
	if (nrows < 2)
		return 0;

	moods = palloc(sizeof(Datum) * nrows / 2);
	as = palloc(sizeof(Datum) * nrows / 2);
	bs = palloc(sizeof(Datum) * nrows / 2);
	uas = palloc(sizeof(Datum) * nrows / 2);
	ubs = palloc(sizeof(Datum) * nrows / 2);

	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	cur = tuptable->vals[i];
		TupleDesc	desc = tuptable->tupdesc;
		HeapTuple	old;
		bool		isnull;
		char	   *cur_mood,
				   *cur_user;

		cur_mood = SPI_getvalue(cur, desc, 3);
		if (i > 0 &&
			strcmp(cur_mood, SPI_getvalue(tuptable->vals[i - 1], desc, 3)) != 0)
		{
			/* a new mood: the odd one out of the last keeps waiting */
			prev = -1;
			run = 0;
		}
		if (++run >= max_per_mood && more)
			*more = true;
		if (!DatumGetBool(SPI_getbinval(cur, desc, 4, &isnull)))
			continue;			/* expired */
		if (prev < 0)
		{
			prev = (int) i;
			continue;
		}
		old = tuptable->vals[prev];
		cur_user = SPI_getvalue(cur, desc, 2);

		if (strcmp(cur_user, SPI_getvalue(old, desc, 2)) == 0)
		{
			/*
			 * Never pair a user with themselves.  The unique index allows
			 * one waiting intent per user, so this needs a damaged index or
			 * a dropped constraint.  Keep the older intent and move on.
			 */
			continue;
		}

		moods[npairs] = CStringGetTextDatum(cur_mood);
		as[npairs] = SPI_getbinval(old, desc, 1, &isnull);
		bs[npairs] = SPI_getbinval(cur, desc, 1, &isnull);
		uas[npairs] = CStringGetTextDatum(SPI_getvalue(old, desc, 2));
		ubs[npairs] = CStringGetTextDatum(cur_user);
		npairs++;
		prev = -1;
	}

	if (npairs > 0)
	{
		Datum		args[7];
		bool		isnull;
		int64		paired;

		args[0] = mm_text_array(moods, npairs);
		args[1] = mm_int8_array(as, npairs);
		args[2] = mm_int8_array(bs, npairs);
		args[3] = mm_text_array(uas, npairs);
		args[4] = mm_text_array(ubs, npairs);
		args[5] = Int32GetDatum(lease_count);
		args[6] = Int32GetDatum(lease_ms);
		ret = SPI_execute_plan(pair_plan, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "recording matches failed: %s",
				 SPI_result_code_string(ret));
		if (SPI_processed != (uint64) npairs)
			elog(ERROR, "recorded " UINT64_FORMAT " matches, expected %d",
				 SPI_processed, npairs);
		paired = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 7,
											 &isnull));
		if (paired != (int64) npairs * 2)
			elog(ERROR, "recorded " INT64_FORMAT " matched intents, expected %d",
				 paired, npairs * 2);
	}

	return npairs;
}

/*
 * matchmaker.match_pass(max_intents integer) returns integer
 *
 * max_intents is the most waiting intents the pass takes from each mood.
 */
Datum
matchmaker_match_pass(PG_FUNCTION_ARGS)
{
	int32		max_per_mood = PG_GETARG_INT32(0);
	int			made;

	if (max_per_mood < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_intents must be at least 2")));

	SPI_connect();
	made = mm_match_pass(max_per_mood, NULL, 0, 0);
	SPI_finish();

	PG_RETURN_INT32(made);
}
