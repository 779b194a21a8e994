/*-------------------------------------------------------------------------
 *
 * matchmaker.c
 *	  Module load: settings and the background worker's registration.
 *
 * The library must be in shared_preload_libraries for the worker to run.
 * Loaded any other way (a plain CREATE EXTENSION in a server without it),
 * the settings still exist so that matchmaker.match_pass() and the intent
 * triggers work, but nothing pairs intents in the background.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "matchmaker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(matchmaker_intents_wake);

/*
 * Waking the worker.  An inserting transaction sets the worker's latch when
 * it commits.  NOTIFY would do the same job, but it takes a global lock at
 * commit and so serialises every inserting transaction; the latch costs
 * nothing.  Without shared memory (the library not in
 * shared_preload_libraries) there is no worker to find, and the trigger
 * falls back to NOTIFY, which the worker also LISTENs for.
 */
MMShared   *mm_shared = NULL;

static emit_log_hook_type prev_emit_log_hook = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool wake_at_commit = false;

static void
request_shmem(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(MMShared)));
}

static void
startup_shmem(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	mm_shared = ShmemInitStruct("matchmaker", sizeof(MMShared), &found);
	if (!found)
	{
		pg_atomic_init_u32(&mm_shared->worker_procno, 0);
		pg_atomic_init_u32(&mm_shared->worker_database, InvalidOid);
		for (int i = 0; i < MM_MAX_SENDERS; i++)
			pg_atomic_init_u32(&mm_shared->sender_procno[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

static void
wake_worker_at_commit(XactEvent event, void *arg)
{
	uint32		procno;

	if (!wake_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		/* a worker that serves another database has nothing to do here */
		procno = pg_atomic_read_u32(&mm_shared->worker_procno);
		if (procno != 0 &&
			pg_atomic_read_u32(&mm_shared->worker_database) == MyDatabaseId)
			SetLatch(&ProcGlobal->allProcs[procno - 1].procLatch);
		wake_at_commit = false;
	}
	else if (event == XACT_EVENT_ABORT ||
			 event == XACT_EVENT_PARALLEL_ABORT)
		wake_at_commit = false;
}

/*
 * matchmaker.intents_wake(): statement-level AFTER INSERT trigger on
 * matchmaker.intents.
 */
Datum
matchmaker_intents_wake(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("matchmaker.intents_wake() must be called as a trigger")));

	if (mm_shared != NULL)
		wake_at_commit = true;
	else
		Async_Notify("matchmaker", "");
	return PointerGetDatum(NULL);
}

char	   *mm_database = NULL;
int			mm_room_provider = MM_ROOM_JANUS;
char	   *mm_room_url = NULL;
int			mm_push_provider = MM_PUSH_WEBHOOK;
char	   *mm_push_url = NULL;
char	   *mm_ca_file = NULL;
int			mm_intent_ttl = 60;
int			mm_max_attempts = 8;
int			mm_retry_base = 500;
int			mm_retry_max = 60000;
int			mm_connect_timeout = 2000;
int			mm_request_timeout = 5000;
int			mm_max_inflight = 128;
int			mm_senders = 0;
int			mm_poll_interval = 500;
int			mm_batch_size = 1000;
char	   *mm_webhook_secret = NULL;
char	   *mm_fcm_project_id = NULL;
char	   *mm_fcm_key_file = NULL;
char	   *mm_fcm_token_url = NULL;
char	   *mm_fcm_url = NULL;
char	   *mm_apns_url = NULL;
char	   *mm_apns_key_file = NULL;
char	   *mm_apns_key_id = NULL;
char	   *mm_apns_team_id = NULL;
char	   *mm_apns_topic = NULL;
char	   *mm_agora_app_id = NULL;
char	   *mm_agora_app_certificate = NULL;
char	   *mm_livekit_url = NULL;
char	   *mm_livekit_api_key = NULL;
char	   *mm_livekit_api_secret = NULL;
int			mm_room_token_ttl = 3600;
int			mm_room_lifetime = 3600;

static const struct config_enum_entry room_provider_options[] = {
	{"janus", MM_ROOM_JANUS, false},
	{"http", MM_ROOM_HTTP, false},
	{"agora", MM_ROOM_AGORA, false},
	{"livekit", MM_ROOM_LIVEKIT, false},
	{NULL, 0, false}
};

static const struct config_enum_entry push_provider_options[] = {
	{"webhook", MM_PUSH_WEBHOOK, false},
	{"fcm", MM_PUSH_FCM, false},
	{"apns", MM_PUSH_APNS, false},
	{NULL, 0, false}
};

/* settings whose values must never reach the server log */
static const char *const secret_settings[] = {
	"matchmaker.webhook_secret",
	"matchmaker.agora_app_certificate",
	"matchmaker.livekit_api_secret",
};

/*
 * Log hook that drops the value from PostgreSQL's own messages about a
 * secret setting.  On reload the postmaster logs every changed setting
 * with its new value, superuser-only or not, and a rejected value is
 * quoted in the error.  The messages are recognised by their
 * untranslated format, and rewritten without the value.
 */
static void
hide_secret_settings(ErrorData *edata)
{
	static const char changed[] = "parameter \"%s\" changed to \"%s\"";
	static const char invalid[] = "invalid value for parameter \"%s\": \"%s\"";

	if (edata->message_id != NULL && edata->message != NULL &&
		(strcmp(edata->message_id, changed) == 0 ||
		 strcmp(edata->message_id, invalid) == 0))
	{
		for (int i = 0; i < lengthof(secret_settings); i++)
		{
			char	   *quoted = psprintf("\"%s\"", secret_settings[i]);

			if (strstr(edata->message, quoted) != NULL)
			{
				if (strcmp(edata->message_id, changed) == 0)
					edata->message = psprintf("parameter %s changed", quoted);
				else
					edata->message = psprintf("invalid value for parameter %s",
											  quoted);
				break;
			}
		}
	}

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * Check hook for URL settings: empty (not configured) or http(s).  Other
 * schemes would fail every request, so they are rejected at reload.
 */
static bool
check_url(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || **newval == '\0' ||
		pg_strncasecmp(*newval, "http://", 7) == 0 ||
		pg_strncasecmp(*newval, "https://", 8) == 0)
		return true;
	GUC_check_errdetail("The URL must start with http:// or https://.");
	return false;
}

/*
 * Check hook for matchmaker.ca_file: empty (the system's CA bundle) or a
 * file the server can read.  A bad path is reported at reload, and the
 * previous setting stays.
 */
static bool
check_ca_file(char **newval, void **extra, GucSource source)
{
	const char *error;

	if (*newval == NULL || **newval == '\0')
		return true;
	if (!mm_check_readable_file(*newval, &error))
	{
		GUC_check_errdetail("%s", error);
		return false;
	}
	return true;
}

static void
define_settings(void)
{
	DefineCustomStringVariable("matchmaker.database",
							   "Database the matchmaker worker serves.",
							   "The worker restarts to follow a change.",
							   &mm_database,
							   "postgres",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomEnumVariable("matchmaker.room_provider",
							 "Service that makes voice rooms: janus, http, agora or livekit.",
							 NULL,
							 &mm_room_provider,
							 MM_ROOM_JANUS,
							 room_provider_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.room_url",
							   "URL of the room provider.",
							   "For janus, the HTTP endpoint such as http://127.0.0.1:8088/janus; for livekit, the server to create rooms on, or empty.",
							   &mm_room_url,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_url, NULL, NULL);

	DefineCustomEnumVariable("matchmaker.push_provider",
							 "Service that delivers pushes: webhook, fcm or apns.",
							 NULL,
							 &mm_push_provider,
							 MM_PUSH_WEBHOOK,
							 push_provider_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.push_url",
							   "URL the webhook push provider posts to.",
							   NULL,
							   &mm_push_url,
							   "http://127.0.0.1:8089/push",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_url, NULL, NULL);

	DefineCustomStringVariable("matchmaker.ca_file",
							   "File of CA certificates that verify providers' TLS certificates.",
							   "Empty uses the system's default CA bundle.",
							   &mm_ca_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_ca_file, NULL, NULL);

	DefineCustomIntVariable("matchmaker.intent_ttl",
							"How long a waiting intent lives.",
							"Applied to intents inserted afterwards.",
							&mm_intent_ttl,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.max_attempts",
							"Attempts at a room or a push before it fails.",
							NULL,
							&mm_max_attempts,
							8, 1, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.retry_base",
							"Delay before the first retry; it doubles with each attempt.",
							NULL,
							&mm_retry_base,
							500, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.retry_max",
							"Longest delay between two attempts.",
							NULL,
							&mm_retry_max,
							60000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.connect_timeout",
							"Time allowed to connect to a provider.",
							NULL,
							&mm_connect_timeout,
							2000, 1, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.request_timeout",
							"Time allowed for a whole request to a provider.",
							NULL,
							&mm_request_timeout,
							5000, 1, 600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	/*
	 * Each request in flight uses a socket, and libcurl keeps idle
	 * connections for reuse besides.  The worker raises its soft limit on
	 * open files to the hard limit at start, and keeps fewer requests in
	 * flight than this when that limit leaves too little room.
	 */
	DefineCustomIntVariable("matchmaker.max_inflight",
							"Most provider requests the worker keeps open at once.",
							NULL,
							&mm_max_inflight,
							128, 1, 4096,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	/*
	 * A sender is one more process that claims due rooms and pushes and
	 * sends their requests, as the worker does.  The worker alone matches,
	 * expires and closes rooms, and wakes the senders when it has more due
	 * requests than free slots.
	 */
	DefineCustomIntVariable("matchmaker.senders",
							"Extra processes that send room and push requests beside the worker.",
							NULL,
							&mm_senders,
							0, 0, MM_MAX_SENDERS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.poll_interval",
							"How often the worker looks for work without being woken.",
							NULL,
							&mm_poll_interval,
							500, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.batch_size",
							"Most waiting intents of each mood one matching pass takes.",
							NULL,
							&mm_batch_size,
							1000, 2, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	/*
	 * Secrets and key paths are for superusers only: GUC_SUPERUSER_ONLY
	 * hides them from SHOW and pg_settings for everyone else, and
	 * GUC_NO_SHOW_ALL keeps them out of SHOW ALL.
	 */
	DefineCustomStringVariable("matchmaker.webhook_secret",
							   "Standard Webhooks signing secret (whsec_...); empty sends unsigned.",
							   NULL,
							   &mm_webhook_secret,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   mm_check_webhook_secret, NULL, NULL);

	DefineCustomStringVariable("matchmaker.fcm_project_id",
							   "Firebase project id for the fcm push provider.",
							   NULL,
							   &mm_fcm_project_id,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.fcm_key_file",
							   "Path of the Firebase service-account key (JSON).",
							   "The file must be readable by the server's OS user only.",
							   &mm_fcm_key_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   mm_check_fcm_key_file, NULL, NULL);

	DefineCustomStringVariable("matchmaker.fcm_token_url",
							   "OAuth 2.0 token endpoint for the fcm push provider.",
							   NULL,
							   &mm_fcm_token_url,
							   "https://oauth2.googleapis.com/token",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_url, NULL, NULL);

	DefineCustomStringVariable("matchmaker.fcm_url",
							   "Base URL of the FCM HTTP v1 API.",
							   NULL,
							   &mm_fcm_url,
							   "https://fcm.googleapis.com",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_url, NULL, NULL);

	DefineCustomStringVariable("matchmaker.apns_url",
							   "Base URL of Apple's push service.",
							   "An http:// URL means cleartext HTTP/2, for local test servers.",
							   &mm_apns_url,
							   "https://api.push.apple.com",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_url, NULL, NULL);

	DefineCustomStringVariable("matchmaker.apns_key_file",
							   "Path of the APNs signing key (.p8).",
							   "The file must be readable by the server's OS user only.",
							   &mm_apns_key_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   mm_check_apns_key_file, NULL, NULL);

	DefineCustomStringVariable("matchmaker.apns_key_id",
							   "Key id of the APNs signing key.",
							   NULL,
							   &mm_apns_key_id,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.apns_team_id",
							   "Apple developer team id for APNs.",
							   NULL,
							   &mm_apns_team_id,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.apns_topic",
							   "App bundle id sent as apns-topic.",
							   NULL,
							   &mm_apns_topic,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.agora_app_id",
							   "Agora app id (32 hexadecimal characters).",
							   NULL,
							   &mm_agora_app_id,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.agora_app_certificate",
							   "Agora app certificate that signs the tokens.",
							   NULL,
							   &mm_agora_app_certificate,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.livekit_url",
							   "LiveKit URL the apps connect to, pushed with each match.",
							   NULL,
							   &mm_livekit_url,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.livekit_api_key",
							   "LiveKit API key.",
							   NULL,
							   &mm_livekit_api_key,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("matchmaker.livekit_api_secret",
							   "LiveKit API secret that signs the tokens.",
							   NULL,
							   &mm_livekit_api_secret,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.room_token_ttl",
							"How long an Agora or LiveKit join token is valid.",
							NULL,
							&mm_room_token_ttl,
							3600, 60, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("matchmaker.room_lifetime",
							"Longest a Janus room lives before the worker destroys it.",
							"Rooms are destroyed sooner when matchmaker.end_match() is called.",
							&mm_room_lifetime,
							3600, 10, 7 * 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("matchmaker");
}

void
_PG_init(void)
{
	BackgroundWorker worker;

	define_settings();

	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = hide_secret_settings;

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = request_shmem;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = startup_shmem;
	RegisterXactCallback(wake_worker_at_commit, NULL);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "matchmaker");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "matchmaker_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "matchmaker worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "matchmaker worker");
	worker.bgw_main_arg = Int32GetDatum(0);
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);

	for (int i = 1; i <= mm_senders; i++)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "matchmaker sender %d", i);
		snprintf(worker.bgw_type, BGW_MAXLEN, "matchmaker sender");
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}
