/*-------------------------------------------------------------------------
 *
 * intents.c
 *	  Row triggers that guard matchmaker.intents.
 *
 * The before-insert trigger checks a new intent and names the bad value in
 * its error, and fills in the columns an app does not set.  The
 * before-update trigger keeps status changes to the transitions of the
 * state machine: apps may only cancel a waiting intent, and every other
 * change is the worker's.  The table's CHECK constraints and its unique
 * index stay as the last line of defence.  These triggers give the errors
 * an app developer can act on.
 *
 * Both run once per row on the insert path of every app, so they are C
 * rather than PL/pgSQL.  The two lookups (is the mood in the catalogue,
 * does the user already wait) read an index directly; see index_finds().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
/* PostgreSQL's SQL function json_object clashes with jansson's */
#define json_object pg_sql_json_object
#include "utils/builtins.h"
#undef json_object
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "matchmaker.h"

PG_FUNCTION_INFO_V1(matchmaker_intents_before_insert);
PG_FUNCTION_INFO_V1(matchmaker_intents_before_update);

#define USER_ID_MAX_BYTES		128
#define PUSH_TOKEN_MAX_BYTES	4096

/* the unique index that allows one waiting intent per user */
#define WAITING_INDEX	"intents_one_waiting_per_user"

/*
 * Return the trigger data of a BEFORE row trigger for INSERT or UPDATE,
 * and raise an error when the function is called some other way.
 */
static TriggerData *
intents_trigger(FunctionCallInfo fcinfo, const char *name, bool insert)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		(insert ? !TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) :
		 !TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired BEFORE %s FOR EACH ROW",
						name, insert ? "INSERT" : "UPDATE")));
	return trigdata;
}

/* Return the value of a named text column of a row, or NULL. */
static char *
text_column(HeapTuple tuple, TupleDesc desc, const char *column)
{
	int			attnum = SPI_fnumber(desc, column);

	if (attnum <= 0)
		elog(ERROR, "matchmaker.intents has no column \"%s\"", column);
	return SPI_getvalue(tuple, desc, attnum);
}

/*
 * Return whether an index whose first column is text contains value for a
 * row this transaction can see: a committed row, or one this transaction
 * wrote, in the current statement too.  So a user twice in one multi-row
 * INSERT gets the friendly error.
 *
 * The index is read directly, as PostgreSQL's unique checks do.  A query
 * would follow the table's statistics, and statistics taken while few
 * intents waited made the planner scan every waiting intent for each
 * insert.  Reading the index needs no right on the table either, so an
 * app role needs none on the catalogue or on other users' intents.
 */
static bool
index_finds(Relation heap, Oid index_oid, const char *value)
{
	Relation	index = index_open(index_oid, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	IndexScanDesc scan;
	ScanKeyData key;
	bool		found;

	ScanKeyEntryInitialize(&key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   index->rd_indcollation[0], F_TEXTEQ,
						   CStringGetTextDatum(value));
	scan = index_beginscan(heap, index, SnapshotSelf, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	return found;
}

/* Return whether matchmaker.moods (in the schema of intents) has a mood. */
static bool
mood_exists(Relation intents, const char *mood)
{
	Oid			moods_oid = get_relname_relid("moods",
											  RelationGetNamespace(intents));
	Relation	moods;
	Oid			pkey;
	bool		found;

	if (!OidIsValid(moods_oid))
		elog(ERROR, "matchmaker.moods does not exist");
	moods = table_open(moods_oid, AccessShareLock);
	pkey = RelationGetPrimaryKeyIndex(moods);
	if (!OidIsValid(pkey))
		elog(ERROR, "matchmaker.moods has no primary key");
	found = index_finds(moods, pkey, mood);
	table_close(moods, AccessShareLock);
	return found;
}

/* Return whether a user already has a waiting intent. */
static bool
user_waits(Relation intents, const char *user_id)
{
	Oid			index_oid = get_relname_relid(WAITING_INDEX,
											  RelationGetNamespace(intents));

	if (!OidIsValid(index_oid))
		elog(ERROR, "index matchmaker.%s does not exist", WAITING_INDEX);
	return index_finds(intents, index_oid, user_id);
}

/*
 * Check that a text column contains between 1 and max_bytes bytes.
 */
static void
check_length(const char *column, const char *value, int max_bytes)
{
	size_t		len = value ? strlen(value) : 0;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("%s must not be empty", column)));
	if (len > (size_t) max_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", column),
				 errdetail("%s is %zu bytes; the limit is %d.",
						   column, len, max_bytes)));
}

/*
 * matchmaker.intents_before_insert() returns trigger
 */
Datum
matchmaker_intents_before_insert(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = intents_trigger(fcinfo,
											"intents_before_insert", true);
	Relation	rel = trigdata->tg_relation;
	TupleDesc	desc = RelationGetDescr(rel);
	HeapTuple	tuple = trigdata->tg_trigtuple;
	char	   *user_id = text_column(tuple, desc, "user_id");
	char	   *mood = text_column(tuple, desc, "mood");
	char	   *status = text_column(tuple, desc, "status");
	int			cols[3];
	Datum		values[3];
	bool		nulls[3] = {true, true, false};
	int			ncols = 2;
	bool		isnull;

	/* values the app alone decides */
	check_length("user_id", user_id, USER_ID_MAX_BYTES);
	check_length("push_token", text_column(tuple, desc, "push_token"),
				 PUSH_TOKEN_MAX_BYTES);

	/* values checked against the tables, and the status in between */
	if (mood == NULL || !mood_exists(rel, mood))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("unknown mood \"%s\"", mood ? mood : ""),
				 errhint("The moods are listed in matchmaker.moods.")));
	if (status == NULL || strcmp(status, "waiting") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("a new intent must be waiting, not %s",
						status ? status : "null")));
	if (user_waits(rel, user_id))
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("user \"%s\" already has a waiting intent", user_id),
				 errhint("Cancel it first: UPDATE matchmaker.intents SET status = 'cancelled'.")));

	/* a new intent has no match, and expires after intent_ttl by default */
	cols[0] = SPI_fnumber(desc, "match_id");
	cols[1] = SPI_fnumber(desc, "matched_at");
	values[0] = values[1] = (Datum) 0;
	cols[2] = SPI_fnumber(desc, "expires_at");
	(void) heap_getattr(tuple, cols[2], desc, &isnull);
	if (isnull)
	{
		Datum		created = heap_getattr(tuple, SPI_fnumber(desc, "created_at"),
										   desc, &isnull);

		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("created_at must not be null")));
		values[2] = TimestampTzGetDatum(
										TimestampTzPlusMilliseconds(DatumGetTimestampTz(created),
																	(int64) mm_intent_ttl * 1000));
		ncols = 3;
	}

	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, ncols,
													 cols, values, nulls));
}

/*
 * Return whether the state machine allows an intent to go from one status
 * to another.
 */
static bool
status_change_allowed(const char *from, const char *to)
{
	if (strcmp(from, "waiting") == 0)
		return strcmp(to, "matched") == 0 || strcmp(to, "expired") == 0 ||
			strcmp(to, "cancelled") == 0;
	if (strcmp(from, "matched") == 0)
		return strcmp(to, "failed") == 0;
	return false;
}

/* Return whether two nullable strings differ, as IS DISTINCT FROM does. */
static bool
distinct(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a != b;
	return strcmp(a, b) != 0;
}

/*
 * matchmaker.intents_before_update() returns trigger
 */
Datum
matchmaker_intents_before_update(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = intents_trigger(fcinfo,
											"intents_before_update", false);
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	HeapTuple	old = trigdata->tg_trigtuple;
	HeapTuple	new = trigdata->tg_newtuple;
	char	   *old_status = text_column(old, desc, "status");
	char	   *new_status = text_column(new, desc, "status");

	if (distinct(old_status, new_status))
	{
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(old,
													SPI_fnumber(desc, "id"),
													desc, &isnull));

		/* status is NOT NULL, so both are set */
		if (old_status == NULL || new_status == NULL ||
			!status_change_allowed(old_status, new_status))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("intent " INT64_FORMAT " cannot go from %s to %s",
							id, old_status ? old_status : "null",
							new_status ? new_status : "null"),
					 errhint("Only a waiting intent can be cancelled.")));
		if (strcmp(new_status, "cancelled") != 0 && !superuser())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("only the matchmaker worker sets an intent to %s",
							new_status),
					 errhint("Apps cancel an intent with status = 'cancelled'.")));
	}
	if (distinct(text_column(old, desc, "user_id"),
				 text_column(new, desc, "user_id")) ||
		distinct(text_column(old, desc, "mood"),
				 text_column(new, desc, "mood")))
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("user_id and mood of an intent cannot change"),
				 errhint("Cancel the intent and insert a new one.")));

	return PointerGetDatum(new);
}
