/*-------------------------------------------------------------------------
 *
 * match.c
 *	  One matching pass: pair waiting intents of the same mood.
 *
 * The pass locks a batch of waiting intents with FOR UPDATE SKIP LOCKED,
 * ordered by mood and age, and pairs neighbours within each mood, so the
 * oldest waiter of a mood always goes first.  Rows another transaction
 * has locked (a concurrent matcher, or an app cancelling its intent) are
 * skipped, never waited for and never paired twice.  All pairs of a pass
 * are written with two statements.
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
/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object

#include "matchmaker.h"

PG_FUNCTION_INFO_V1(matchmaker_match_pass);

static SPIPlanPtr select_plan = NULL;
static SPIPlanPtr pair_plan = NULL;

/*
 * Only intents with another waiting intent in their mood are read, so
 * that a batch full of lone waiters cannot hide pairs further on.
 */
static const char *select_sql =
"SELECT i.id, i.user_id, i.mood FROM matchmaker.intents i "
"WHERE i.status = 'waiting' AND i.expires_at > now() "
"  AND EXISTS (SELECT 1 FROM matchmaker.intents o "
"              WHERE o.mood = i.mood AND o.status = 'waiting' "
"                AND o.id <> i.id AND o.expires_at > now()) "
"ORDER BY i.mood, i.id "
"LIMIT $1 "
"FOR UPDATE OF i SKIP LOCKED";

static const char *pair_sql =
"WITH pairs AS ("
"  SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[],"
"                       $4::text[], $5::text[]) AS p(mood, a, b, ua, ub)"
"), made AS ("
"  INSERT INTO matchmaker.matches (mood, intent_ids, user_ids)"
"  SELECT mood, ARRAY[a, b], ARRAY[ua, ub] FROM pairs"
"  RETURNING id, intent_ids"
"), members AS ("
"  SELECT made.id AS match_id, unnest(made.intent_ids) AS intent_id FROM made"
") "
"UPDATE matchmaker.intents i "
"SET status = 'matched', match_id = members.match_id, matched_at = now() "
"FROM members WHERE i.id = members.intent_id";

static SPIPlanPtr
prepare_once(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
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

static Datum
text_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

static Datum
int8_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8,
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Run one pass inside the current transaction, with SPI connected.
 * Returns the number of matches made; *scanned gets the number of waiting
 * intents looked at, so the caller can tell whether a full batch came back.
 */
int
mm_match_pass(int max_intents, int *scanned)
{
	Oid			select_types[1] = {INT4OID};
	Oid			pair_types[5] = {TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID};
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
	SPITupleTable *tuptable;

	prepare_once(&select_plan, select_sql, 1, select_types);
	prepare_once(&pair_plan, pair_sql, 5, pair_types);

	arg = Int32GetDatum(max_intents);
	ret = SPI_execute_plan(select_plan, &arg, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "selecting waiting intents failed: %s",
			 SPI_result_code_string(ret));

	nrows = SPI_processed;
	tuptable = SPI_tuptable;
	if (scanned)
		*scanned = (int) nrows;
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

		if (prev < 0)
		{
			prev = (int) i;
			continue;
		}
		old = tuptable->vals[prev];
		cur_mood = SPI_getvalue(cur, desc, 3);
		cur_user = SPI_getvalue(cur, desc, 2);

		if (strcmp(cur_mood, SPI_getvalue(old, desc, 3)) != 0)
		{
			/* a new mood: the odd one out of the last keeps waiting */
			prev = (int) i;
			continue;
		}
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
		Datum		args[5];

		args[0] = text_array(moods, npairs);
		args[1] = int8_array(as, npairs);
		args[2] = int8_array(bs, npairs);
		args[3] = text_array(uas, npairs);
		args[4] = text_array(ubs, npairs);
		ret = SPI_execute_plan(pair_plan, args, NULL, false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "recording matches failed: %s",
				 SPI_result_code_string(ret));
		if (SPI_processed != (uint64) npairs * 2)
			elog(ERROR, "recorded " UINT64_FORMAT " matched intents, expected %d",
				 SPI_processed, npairs * 2);
	}

	return npairs;
}

/*
 * matchmaker.match_pass(max_intents integer) returns integer
 */
Datum
matchmaker_match_pass(PG_FUNCTION_ARGS)
{
	int32		max_intents = PG_GETARG_INT32(0);
	int			made;

	if (max_intents < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_intents must be at least 2")));

	SPI_connect();
	made = mm_match_pass(max_intents, NULL);
	SPI_finish();

	PG_RETURN_INT32(made);
}
